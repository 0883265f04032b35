/**
 * Text for a 120-column terminal: the span trees of `kspan run` and of the demo,
 * and the demo's labelled summary rows, are built with these.
 */

/** No tree or summary line is wider than this. */
export const MAX_COLUMNS = 120;

/** Columns of a string on a terminal (the tree's box characters are one column each). */
export const columns = (text: string): number => [...text].length;

/** `text` cut to `width` columns, ending in … when cut. */
export function cut(text: string, width: number): string {
  const chars = [...text];
  return chars.length <= width ? text : `${chars.slice(0, Math.max(0, width - 1)).join('')}…`;
}

/**
 * `head` and then `parts` (two spaces apart) on lines of at most `width` columns:
 * the parts that do not fit go on following lines after `indent`; a part too
 * long for any line is cut.
 */
export function fitLine(head: string, parts: string[], indent: string, width = MAX_COLUMNS): string[] {
  const lines: string[] = [];
  let line = cut(head, width);
  for (const part of parts) {
    if (columns(line) + 2 + columns(part) <= width) {
      line += `  ${part}`;
      continue;
    }
    lines.push(line);
    line = indent + cut(part, width - columns(indent));
  }
  lines.push(line.trimEnd());
  return lines;
}

/**
 * `label` in a column of `labelWidth`, then `text` under its own first column:
 * a new line at each \n, and wrapped at spaces where longer than the room.
 */
export function labelled(label: string, labelWidth: number, text: string, width = MAX_COLUMNS): string[] {
  const room = width - labelWidth;
  const lines: string[] = [];
  for (const paragraph of text.split('\n')) {
    let line = '';
    for (const word of paragraph.split(' ')) {
      if (line && columns(line) + 1 + columns(word) > room) {
        lines.push(line);
        line = '';
      }
      line = line ? `${line} ${word}` : cut(word, room);
    }
    lines.push(line);
  }
  const indent = ' '.repeat(labelWidth);
  return lines.map((l, i) => `${i === 0 ? cut(label, labelWidth - 1).padEnd(labelWidth) : indent}${l}`.trimEnd());
}
