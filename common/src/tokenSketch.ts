// Bounded "top tokens" counting for every (layer, expert) at once: a Space-Saving summary (Metwally et al., 2005) of
// `slots` entries per expert, all in flat typed arrays. A token already held counts up; a new token takes the slot of
// the least counted one and inherits its count as the error bound. So memory is fixed (experts × slots), every token
// whose true count exceeds N / slots is held, and a held count over-estimates by at most its `error` — 0 (exact) for
// as long as an expert never saw more distinct tokens than it has slots. The hot path of set statistics: a hash per
// expert (open addressing, linear probing) finds a token's slot, a min-heap per expert finds the slot to give up.

export interface TopToken {
  token: number;
  count: number;
  /** The count over-estimates the true one by at most this (0 = exact). */
  error: number;
}

const EMPTY = -1;

function hashOf(token: number, mask: number): number {
  return Math.imul(token, 0x9e3779b1) >>> 0 & mask;
}

export class TokenSketch {
  readonly slots: number;
  private readonly tableSize: number;
  private readonly token: Int32Array;   // [experts × slots]
  private readonly count: Float64Array; // [experts × slots]
  private readonly error: Float64Array; // [experts × slots]
  private readonly heap: Int32Array;    // [experts × slots]: slot of each heap position, least count first
  private readonly where: Int32Array;   // [experts × slots]: heap position of each slot
  private readonly size: Int32Array;    // [experts]
  private readonly table: Int32Array;   // [experts × tableSize]: slot, or EMPTY

  constructor(readonly experts: number, slots: number) {
    this.slots = Math.max(1, slots);
    let t = 2;
    while (t < 2 * this.slots) t *= 2;
    this.tableSize = t;
    const n = experts * this.slots;
    this.token = new Int32Array(n).fill(EMPTY);
    this.count = new Float64Array(n);
    this.error = new Float64Array(n);
    this.heap = new Int32Array(n);
    this.where = new Int32Array(n);
    this.size = new Int32Array(experts);
    this.table = new Int32Array(experts * t).fill(EMPTY);
  }

  /** Bytes held (fixed at construction). */
  get bytes(): number {
    return this.token.byteLength + this.count.byteLength + this.error.byteLength + this.heap.byteLength + this.where.byteLength + this.table.byteLength;
  }

  /** Counts one occurrence of `token` for expert `x` (0-based index over all sketched experts). */
  add(x: number, token: number): void {
    const base = x * this.slots;
    const tbase = x * this.tableSize;
    const mask = this.tableSize - 1;
    let h = hashOf(token, mask);
    for (;;) {
      const slot = this.table[tbase + h];
      if (slot === EMPTY) break;
      if (this.token[base + slot] === token) {
        this.count[base + slot] += 1;
        this.siftDown(x, this.where[base + slot]);
        return;
      }
      h = (h + 1) & mask;
    }
    const size = this.size[x];
    if (size < this.slots) {
      // A free slot: insert at h (the empty table entry the probe stopped at).
      this.token[base + size] = token;
      this.count[base + size] = 1;
      this.error[base + size] = 0;
      this.table[tbase + h] = size;
      this.heap[base + size] = size;
      this.where[base + size] = size;
      this.size[x] = size + 1;
      this.siftUp(x, size);
      return;
    }
    // Full: the least counted token gives up its slot; the newcomer inherits its count as the error bound.
    const slot = this.heap[base];
    this.remove(x, this.token[base + slot]);
    this.error[base + slot] = this.count[base + slot];
    this.count[base + slot] += 1;
    this.token[base + slot] = token;
    h = hashOf(token, mask);
    while (this.table[tbase + h] !== EMPTY) h = (h + 1) & mask;
    this.table[tbase + h] = slot;
    this.siftDown(x, 0);
  }

  /** The expert's tokens by count (largest first, ties → lower token id), at most `n`. */
  top(x: number, n: number): TopToken[] {
    const base = x * this.slots;
    const order = new Int32Array(this.size[x]);
    for (let s = 0; s < order.length; s++) order[s] = base + s;
    order.sort((a, b) => this.count[b] - this.count[a] || this.token[a] - this.token[b]);
    return Array.from(order.subarray(0, n), (i) => ({ token: this.token[i], count: this.count[i], error: this.error[i] }));
  }

  /** Takes `token` out of expert x's hash table (backward-shift deletion keeps probe chains whole). */
  private remove(x: number, token: number): void {
    const base = x * this.slots;
    const tbase = x * this.tableSize;
    const mask = this.tableSize - 1;
    let h = hashOf(token, mask);
    while (this.token[base + this.table[tbase + h]] !== token) h = (h + 1) & mask;
    let hole = h;
    let j = h;
    for (;;) {
      j = (j + 1) & mask;
      const slot = this.table[tbase + j];
      if (slot === EMPTY) break;
      const home = hashOf(this.token[base + slot], mask);
      // Move the entry back into the hole unless its home lies cyclically in (hole, j].
      const between = hole <= j ? home > hole && home <= j : home > hole || home <= j;
      if (!between) {
        this.table[tbase + hole] = slot;
        hole = j;
      }
    }
    this.table[tbase + hole] = EMPTY;
  }

  private less(x: number, a: number, b: number): boolean {
    const base = x * this.slots;
    return this.count[base + this.heap[base + a]] < this.count[base + this.heap[base + b]];
  }

  private swap(x: number, a: number, b: number): void {
    const base = x * this.slots;
    const sa = this.heap[base + a];
    const sb = this.heap[base + b];
    this.heap[base + a] = sb;
    this.heap[base + b] = sa;
    this.where[base + sb] = a;
    this.where[base + sa] = b;
  }

  private siftUp(x: number, i: number): void {
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.less(x, i, parent)) return;
      this.swap(x, i, parent);
      i = parent;
    }
  }

  private siftDown(x: number, i: number): void {
    const n = this.size[x];
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) return;
      const r = l + 1;
      const c = r < n && this.less(x, r, l) ? r : l;
      if (!this.less(x, c, i)) return;
      this.swap(x, i, c);
      i = c;
    }
  }
}
