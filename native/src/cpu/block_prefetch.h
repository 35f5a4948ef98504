// Software prefetch of the weight block a packing step reads next, for the AVX-512 translation units (internal
// linkage). Each weight row of a 2048-wide bf16 matrix is one 4 KiB page, so the hardware stream prefetchers do not
// follow the 32 rows a panel reads at once; unprefetched, packing waits on DRAM latency for every line.
#pragma once
#include <xmmintrin.h>

namespace routescope {

struct BlockPrefetch {
  const unsigned char* base = nullptr;  // first byte of the block in its first row
  long row_bytes = 0;
  int lines_per_row = 0, issued = 0, total = 0;
  const unsigned char* row = nullptr;  // the row of the next line, and the next line's index in it
  int line = 0;
  // rows [n, n + rows) of W (row_bytes apart), bytes [b0, b0 + span) of each row.
  void set(const unsigned char* W, long row_bytes_, int n, int rows, long b0, long span) {
    row_bytes = row_bytes_;
    base = W + (long)n * row_bytes + b0;
    lines_per_row = (int)((span + 63) / 64);
    issued = 0;
    total = rows * lines_per_row;
    row = base;
    line = 0;
  }
  void clear() { total = issued = 0; }
  // Issues the next `count` lines (into L2): called between micro-kernel calls to spread them out. Row by row with
  // running counters (no division per line: this runs between every pair of micro-kernel calls).
  void issue(int count) {
    const int end = issued + count < total ? issued + count : total;
    for (; issued < end; ++issued) {
      _mm_prefetch((const char*)(row + (long)line * 64), _MM_HINT_T1);
      if (++line == lines_per_row) line = 0, row += row_bytes;
    }
  }
};

}  // namespace routescope
