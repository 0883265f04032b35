// `node --import kspan/publisher/register app.mjs` starts here (package.json
// "exports"). Node 24 goes on to ./register.ts; an older Node gets one warning
// (./old-node.mjs) and the application runs unchanged.
import { NODE_SUPPORTED, warnDeclined } from './old-node.mjs';

if (NODE_SUPPORTED) await import('./register.ts');
else warnDeclined();
