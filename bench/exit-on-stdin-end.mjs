// Imported (node --import) into a benchmark's Node service: the service exits
// when its stdin closes, so it never outlives the benchmark that started it.
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
process.stdin.unref?.();
