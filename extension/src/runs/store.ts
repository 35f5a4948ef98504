// This session's runs (newest last), the selected one, and change events for the side panel and routing panel.
// In memory only: a run holds its full routing, so the oldest runs are dropped beyond `limit`.
import type { Run } from './run';

type Listener<T> = (value: T) => void;

export interface RunStoreChange {
  kind: 'added' | 'updated' | 'removed' | 'selected' | 'cleared';
  run?: Run;
}

export class RunStore {
  private readonly runs: Run[] = [];
  private selectedId: number | undefined;
  private lastId = 0;
  private readonly listeners = new Set<Listener<RunStoreChange>>();

  constructor(private readonly limit = 50) {}

  readonly onDidChange = (listener: Listener<RunStoreChange>): { dispose(): void } => {
    this.listeners.add(listener);
    return { dispose: () => this.listeners.delete(listener) };
  };

  private fire(change: RunStoreChange): void {
    for (const l of [...this.listeners]) l(change);
  }

  /** A fresh run id. */
  nextId(): number {
    return ++this.lastId;
  }

  add(run: Run, select = true): void {
    this.runs.push(run);
    while (this.runs.length > this.limit) {
      const dropped = this.runs.shift()!;
      if (dropped.id === this.selectedId) this.selectedId = undefined;
      this.fire({ kind: 'removed', run: dropped });
    }
    this.fire({ kind: 'added', run });
    if (select) this.select(run.id);
  }

  /** Tells listeners a run changed in place (streaming, finished, failed). */
  updated(run: Run): void {
    if (this.runs.includes(run)) this.fire({ kind: 'updated', run });
  }

  remove(id: number): void {
    const i = this.runs.findIndex((r) => r.id === id);
    if (i < 0) return;
    const [run] = this.runs.splice(i, 1);
    if (this.selectedId === id) this.selectedId = undefined;
    this.fire({ kind: 'removed', run });
  }

  clear(): void {
    this.runs.length = 0;
    this.selectedId = undefined;
    this.fire({ kind: 'cleared' });
  }

  get(id: number): Run | undefined {
    return this.runs.find((r) => r.id === id);
  }

  /** Oldest first. */
  all(): readonly Run[] {
    return this.runs;
  }

  get size(): number {
    return this.runs.length;
  }

  select(id: number | undefined): void {
    if (id !== undefined && !this.get(id)) return;
    if (this.selectedId === id) return;
    this.selectedId = id;
    this.fire({ kind: 'selected', ...(id !== undefined ? { run: this.get(id)! } : {}) });
  }

  get selected(): Run | undefined {
    return this.selectedId === undefined ? undefined : this.get(this.selectedId);
  }

  /** The latest finished run before `run` on the same model (what "Compare with Previous Run" uses). */
  previous(run: Run): Run | undefined {
    const i = this.runs.indexOf(run);
    for (let j = (i < 0 ? this.runs.length : i) - 1; j >= 0; j--) {
      const r = this.runs[j];
      if (r.model.dir === run.model.dir && r.finishedAt !== undefined && !r.error) return r;
    }
    return undefined;
  }
}
