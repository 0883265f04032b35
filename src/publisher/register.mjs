// `node --import kspan/publisher/register app.mjs` starts here (package.json
// "exports"). Node 24 goes on to ./register.ts (compiled when set-up built it:
// ./compiled.mjs); an older Node gets one warning (./old-node.mjs) and the
// application runs unchanged.
import { pathToFileURL } from 'node:url';
import { publisherModule } from './compiled.mjs';
import { NODE_SUPPORTED, warnDeclined } from './old-node.mjs';

if (NODE_SUPPORTED) await import(pathToFileURL(publisherModule('register')).href);
else warnDeclined();
