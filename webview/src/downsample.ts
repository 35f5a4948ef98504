// Downsampling of grid rows for zoomed-out views (pure; no DOM). When a token column would be narrower than the
// grid's minimum cell width, columns are grouped into blocks of `block` tokens (a power of two) and each block is
// drawn as one cell: categorical values (top-1 expert) by their majority, continuous values (entropy, weight) by
// their mean, change against a compared run by its maximum so that a single changed token stays visible.
// Missing cells (-1 / NaN: not streamed yet) are skipped; a block with none present is missing itself.

export type Reduce = 'mode' | 'mean' | 'max';

/** Majority of values[0..n) per block; ties go to the lower category; -1 marks an empty block. */
export function downsampleMode(values: Int32Array, n: number, block: number, categories: number, out?: Int32Array): Int32Array {
  const blocks = Math.ceil(n / block);
  const result = out && out.length >= blocks ? out : new Int32Array(blocks);
  const counts = new Int32Array(Math.max(1, categories));
  const touched = new Int32Array(block);
  for (let b = 0; b < blocks; b++) {
    const from = b * block;
    const to = Math.min(n, from + block);
    let best = -1;
    let bestCount = 0;
    let nTouched = 0;
    for (let i = from; i < to; i++) {
      const v = values[i];
      if (v < 0 || v >= categories) continue;
      if (counts[v] === 0) touched[nTouched++] = v;
      const c = ++counts[v];
      if (c > bestCount || (c === bestCount && v < best)) {
        best = v;
        bestCount = c;
      }
    }
    for (let j = 0; j < nTouched; j++) counts[touched[j]] = 0;
    result[b] = best;
  }
  return result;
}

/** Mean (or max) of the non-NaN values[0..n) per block; NaN for an empty block. */
export function downsampleNumeric(values: Float32Array, n: number, block: number, reduce: 'mean' | 'max', out?: Float32Array): Float32Array {
  const blocks = Math.ceil(n / block);
  const result = out && out.length >= blocks ? out : new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    const from = b * block;
    const to = Math.min(n, from + block);
    let acc = reduce === 'max' ? -Infinity : 0;
    let count = 0;
    for (let i = from; i < to; i++) {
      const v = values[i];
      if (Number.isNaN(v)) continue;
      if (reduce === 'max') acc = v > acc ? v : acc;
      else acc += v;
      count++;
    }
    result[b] = count === 0 ? NaN : reduce === 'max' ? acc : acc / count;
  }
  return result;
}

/** The block size for a column width: the smallest power of two with block × cellWidth ≥ minCellWidth. */
export function blockFor(cellWidth: number, minCellWidth: number): number {
  if (cellWidth >= minCellWidth) return 1;
  return 2 ** Math.ceil(Math.log2(minCellWidth / cellWidth));
}

/**
 * Caches downsampled rows per (key, row, block); an entry is rebuilt when its row's version changes
 * (streaming fills rows, diff recomputes them).
 */
export class DownsampleCache {
  private readonly entries = new Map<string, { version: number; n: number; values: Int32Array | Float32Array }>();

  mode(key: string, row: number, version: number, values: Int32Array, n: number, block: number, categories: number): Int32Array {
    if (block === 1) return values;
    const id = `${key}/${row}/${block}`;
    const hit = this.entries.get(id);
    if (hit && hit.version === version && hit.n === n) return hit.values as Int32Array;
    const out = downsampleMode(values, n, block, categories);
    this.entries.set(id, { version, n, values: out });
    return out;
  }

  numeric(key: string, row: number, version: number, values: Float32Array, n: number, block: number, reduce: 'mean' | 'max'): Float32Array {
    if (block === 1) return values;
    const id = `${key}/${row}/${block}`;
    const hit = this.entries.get(id);
    if (hit && hit.version === version && hit.n === n) return hit.values as Float32Array;
    const out = downsampleNumeric(values, n, block, reduce);
    this.entries.set(id, { version, n, values: out });
    return out;
  }

  clear(): void {
    this.entries.clear();
  }
}
