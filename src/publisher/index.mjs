// `import { startPublisher, KspanSpanProcessor } from 'kspan/publisher'` starts
// here (package.json "exports"; the types are ./index.ts's). Node 24 gets
// ./index.ts, compiled (dist/publisher/index.js) when set-up built it
// (./compiled.mjs). An older Node gets the same two exports, inert: startPublisher()
// warns once (./old-node.mjs) and returns a publisher that is not active, and
// KspanSpanProcessor does nothing, so the application runs unchanged.
// Synchronous (no top-level await), so that CommonJS can require() it too.
import { createRequire } from 'node:module';
import { publisherModule } from './compiled.mjs';
import { DECLINED_REASON, NODE_SUPPORTED, warnDeclined } from './old-node.mjs';

const publisher = NODE_SUPPORTED ? createRequire(import.meta.url)(publisherModule('index')) : declinedPublisher();

export const startPublisher = publisher.startPublisher;
export const KspanSpanProcessor = publisher.KspanSpanProcessor;

function declinedPublisher() {
  const inert = {
    active: false,
    reason: DECLINED_REASON,
    processContext: undefined,
    stats: { contexts: 0, createFailures: 0, invalidated: 0, managers: 0, calls: 0, switches: 0, processContextPublished: 0, processContextFailures: 0 },
    addContextManager() {},
    setResource() {},
    stop() {},
  };
  return {
    startPublisher(options = {}) {
      warnDeclined(options.warn);
      return inert;
    },
    KspanSpanProcessor: class KspanSpanProcessor {
      // Node 24's starts the publisher when given none.
      constructor(publisher) {
        if (publisher === undefined) warnDeclined();
      }
      onStart() {}
      onEnd() {}
      forceFlush() {
        return Promise.resolve();
      }
      shutdown() {
        return Promise.resolve();
      }
    },
  };
}
