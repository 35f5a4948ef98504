// The extension side of the engine: starts the engine process (dist/engine-worker.js) on first use, sends typed
// requests (engine/protocol.ts), streams their events, forwards cancellation, and survives the process dying:
// pending requests fail with a clear message and the next request starts a fresh process (reloading the model
// that was open). Typed by the table of requests the engine process serves (CoreMethods, plus e.g. adaptation's
// AdaptMethods). No vscode import, so the unit tests drive it directly.
import { fork, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { packageRoot } from './addon';
import {
  EngineError,
  type CoreMethods,
  type EventOf,
  type LoadParams,
  type LoadResult,
  type MethodTable,
  type ParamsOf,
  type ResultOf,
  type WorkerMessage,
  type RequestMessage,
} from './protocol';

/** Anything with VS Code's CancellationToken shape. */
export interface CancellationLike {
  readonly isCancellationRequested: boolean;
  onCancellationRequested(listener: () => void): { dispose(): void };
}

export interface EngineHostOptions {
  /** The bundled worker; default <package>/dist/engine-worker.js. */
  workerPath?: string;
  /** Engine log lines (worker log messages and its stderr). */
  log?: (line: string) => void;
  /** Extra environment for the engine process. */
  env?: NodeJS.ProcessEnv;
}

export interface EngineExit {
  pid: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True when the host stopped it (dispose/restart), false when it died. */
  expected: boolean;
  message: string;
}

interface Pending {
  method: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  onEvent?: (event: never) => void;
}

type Listener<T> = (value: T) => void;

class Emitter<T> {
  private readonly listeners = new Set<Listener<T>>();
  readonly event = (listener: Listener<T>): { dispose(): void } => {
    this.listeners.add(listener);
    return { dispose: () => this.listeners.delete(listener) };
  };
  fire(value: T): void {
    for (const l of [...this.listeners]) l(value);
  }
}

export interface RequestOptions<E> {
  onEvent?: (event: E) => void;
  token?: CancellationLike;
}

export class EngineHost<M extends MethodTable = CoreMethods> {
  private child: ChildProcess | undefined;
  private ready: Promise<void> | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  /** The model to reopen after a restart (cleared by unload). */
  private model: { params: LoadParams; result: LoadResult } | undefined;
  /** True once the process that had `model` loaded died; the next model request reloads it first. */
  private needsReload = false;
  private stopping = new WeakSet<ChildProcess>();
  private readonly exits = new Emitter<EngineExit>();
  private readonly modelChanges = new Emitter<LoadResult | undefined>();
  private readonly starts = new Emitter<number>();
  private disposed = false;
  /** Version of the addon in the running process (after start). */
  engineVersion: string | null = null;

  /** Fired when the engine process ends (died or stopped). */
  readonly onDidExit = this.exits.event;
  /** Fired with the pid when an engine process has started. */
  readonly onDidStart = this.starts.event;
  /** Fired when a model is loaded or unloaded (also when a dead process loses it). */
  readonly onDidChangeModel = this.modelChanges.event;

  constructor(private readonly options: EngineHostOptions = {}) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== undefined;
  }

  /** The open model (also while a restart is due: it is reloaded on the next request). */
  get loaded(): LoadResult | undefined {
    return this.model?.result;
  }

  private log(line: string): void {
    this.options.log?.(line);
  }

  private start(): Promise<void> {
    if (this.disposed) return Promise.reject(new EngineError('DISPOSED', 'the engine host has been disposed'));
    if (this.ready) return this.ready;
    const workerPath = this.options.workerPath ?? path.join(packageRoot(__dirname), 'dist', 'engine-worker.js');
    const child = fork(workerPath, [], {
      serialization: 'advanced',
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      env: { ...process.env, ...this.options.env, ELECTRON_RUN_AS_NODE: '1' },
      execArgv: [],
    });
    this.child = child;
    const forward = (chunk: Buffer): void => {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) this.log(`[engine ${child.pid}] ${line}`);
    };
    // The engine's last word before dying (e.g. "routescope: <file>: the model file changed while it was in use").
    let lastError = '';
    child.stdout?.on('data', forward);
    child.stderr?.on('data', (chunk: Buffer) => {
      forward(chunk);
      const lines = chunk.toString('utf8').split('\n').filter((l) => l.trim() !== '');
      if (lines.length > 0) lastError = lines[lines.length - 1].replace(/^routescope: /, '').slice(0, 500);
    });
    this.ready = new Promise<void>((resolve, reject) => {
      let started = false;
      child.on('message', (message: WorkerMessage) => {
        if (message.type === 'ready') {
          started = true;
          this.engineVersion = message.version;
          this.log(
            message.error
              ? `engine process ${message.pid} started without the engine: ${message.error}`
              : `engine process ${message.pid} started (engine ${message.version}, CUDA ${message.cudaCompiled ? 'compiled' : 'not compiled'})`,
          );
          resolve();
          this.starts.fire(message.pid);
          return;
        }
        this.onMessage(message);
      });
      child.on('error', (error) => {
        if (!started) reject(new EngineError('NO_ENGINE', `cannot start the engine process: ${error.message}`));
      });
      // 'close', not 'exit': stderr is read to its end first, so the engine's last line makes it into the message.
      child.on('close', (code, signal) => {
        const expected = this.stopping.has(child);
        const message = expected
          ? 'the engine process was stopped'
          : `the engine process exited unexpectedly (${signal ? `signal ${signal}` : `exit code ${code}`}${lastError ? `: ${lastError}` : ''}); it restarts on the next action`;
        if (!started) reject(new EngineError('ENGINE_DIED', message));
        this.onExit(child, { pid: child.pid ?? -1, code, signal, expected, message });
      });
    });
    return this.ready;
  }

  private onExit(child: ChildProcess, exit: EngineExit): void {
    if (this.child === child) {
      this.child = undefined;
      this.ready = undefined;
    }
    this.log(exit.message);
    for (const [id, p] of this.pending) {
      p.reject(new EngineError(exit.expected ? 'CANCELLED' : 'ENGINE_DIED', exit.message));
      this.pending.delete(id);
    }
    if (this.model && !exit.expected) this.needsReload = true;
    this.exits.fire(exit);
  }

  private onMessage(message: WorkerMessage): void {
    switch (message.type) {
      case 'log':
        this.log(message.line);
        return;
      case 'event': {
        const p = this.pending.get(message.id);
        p?.onEvent?.(message.event as never);
        return;
      }
      case 'result': {
        const p = this.pending.get(message.id);
        if (!p) return;
        this.pending.delete(message.id);
        p.resolve(message.result);
        return;
      }
      case 'error': {
        const p = this.pending.get(message.id);
        if (!p) return;
        this.pending.delete(message.id);
        p.reject(new EngineError(message.error.code, message.error.message));
        return;
      }
      default:
        return;
    }
  }

  /** One request; events stream to onEvent; a cancelled token cancels it in the engine (rejects CANCELLED). */
  request<K extends keyof M & string>(method: K, params: ParamsOf<M, K>, options: RequestOptions<EventOf<M, K>> = {}): Promise<ResultOf<M, K>> {
    return this.call(method, params, options as RequestOptions<never>) as Promise<ResultOf<M, K>>;
  }

  private async call(method: string, params: unknown, options: RequestOptions<never>): Promise<unknown> {
    if (options.token?.isCancellationRequested) throw new EngineError('CANCELLED', 'cancelled');
    await this.start();
    if (this.needsReload && method !== 'load' && method !== 'unload' && this.model) {
      this.needsReload = false;
      const { params: loadParams } = this.model;
      this.log(`reloading ${loadParams.dir} in the new engine process`);
      try {
        await this.send('load', loadParams, {});
      } catch (error) {
        this.model = undefined;
        this.modelChanges.fire(undefined);
        throw error;
      }
    }
    return this.send(method, params, options);
  }

  private send(method: string, params: unknown, options: RequestOptions<never>): Promise<unknown> {
    const child = this.child;
    if (!child) return Promise.reject(new EngineError('ENGINE_DIED', 'the engine process is not running'));
    const id = this.nextId++;
    return new Promise<unknown>((resolve, reject) => {
      let subscription: { dispose(): void } | undefined;
      const done = <T>(f: (v: T) => void) => (v: T): void => {
        subscription?.dispose();
        f(v);
      };
      this.pending.set(id, {
        method,
        resolve: done(resolve),
        reject: done(reject),
        ...(options.onEvent ? { onEvent: options.onEvent as (event: never) => void } : {}),
      });
      if (options.token) {
        subscription = options.token.onCancellationRequested(() => this.cancel(id));
      }
      const message: RequestMessage = { type: 'request', id, method, params };
      child.send(message, (error) => {
        if (error && this.pending.has(id)) {
          this.pending.delete(id);
          subscription?.dispose();
          reject(new EngineError('ENGINE_DIED', `cannot reach the engine process: ${error.message}`));
        }
      });
    });
  }

  private cancel(id: number): void {
    if (this.pending.has(id) && this.child?.connected) this.child.send({ type: 'cancel', id });
  }

  /** Opens a model (closing the previous one); remembered so a restarted engine reopens it. */
  async load(params: LoadParams, token?: CancellationLike): Promise<LoadResult> {
    const result = (await this.call('load', params, token ? { token } : {})) as LoadResult;
    this.model = { params, result };
    this.needsReload = false;
    this.modelChanges.fire(result);
    return result;
  }

  /** Closes the open model and frees its memory. */
  async unload(): Promise<void> {
    const had = this.model !== undefined;
    this.model = undefined;
    this.needsReload = false;
    if (this.child) await this.call('unload', {}, {});
    if (had) this.modelChanges.fire(undefined);
  }

  /** Stops the engine process (the next request starts a new one and reloads the model). */
  async restart(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.stopping.add(child);
    if (this.model) this.needsReload = true;
    await new Promise<void>((resolve) => {
      child.once('close', () => resolve()); // after onExit has run
      child.kill('SIGTERM');
    });
  }

  dispose(): void {
    this.disposed = true;
    const child = this.child;
    if (child) {
      this.stopping.add(child);
      child.kill('SIGTERM');
    }
  }
}
