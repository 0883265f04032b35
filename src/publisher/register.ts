/**
 * `node --import kspan/publisher/register app.mjs`: starts kspan/publisher before
 * the application, so that the OpenTelemetry SDK it sets up later (NodeSDK, or a
 * TracerProvider with the AsyncLocalStorage context manager) is mirrored with no
 * code change. See ./index.ts.
 */
import { startPublisher } from './index.ts';

startPublisher();
