// The engine process's entry (dist/engine-worker.js, forked by engine/host.ts): the engine's own requests plus the
// ones adaptation and the routing statistics register (adapt/requests.ts, stats/requests.ts). Only wiring, like
// extension.ts.
import { serveEngine } from './engine/worker';
import { adaptHandlers } from './adapt/requests';
import { statsHandlers } from './stats/requests';

serveEngine({ ...adaptHandlers, ...statsHandlers });
