import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { formatRoutingTable, formatWeight, truncate } from '../../extension/src/cli/table';
import { visibleToken } from '../../common/src/format';
import { formatF32 } from '../../extension/src/cli/output';

test('weights print in three characters', () => {
  assert.equal(formatWeight(0.6234), '.62');
  assert.equal(formatWeight(0.005), '.01');
  assert.equal(formatWeight(0.999), '1.0');
  assert.equal(formatWeight(1), '1.0');
  assert.equal(formatWeight(0), '.00');
  assert.equal(formatWeight(NaN), '?');
});

test('tokens are made visible and truncated', () => {
  assert.equal(visibleToken(' the'), '·the');
  assert.equal(visibleToken('a\nb\t'), 'a⏎b⇥');
  assert.equal(visibleToken(''), '∅');
  assert.equal(visibleToken('\u0001'), '�');
  assert.equal(truncate('abcdefgh', 5), 'abcd…');
  assert.equal(truncate('abc', 5), 'abc');
  assert.equal(truncate('日本語です', 3), '日本…');
});

const layers = [
  { layer: 0, experts: [[3, 1], [12, 0], [5, 2]], weights: [[0.62, 0.38], [0.5, 0.5], [1, 0]] },
  { layer: 7, experts: [[0, 1], undefined, [1, 2]], weights: [[0.9, 0.1], undefined, [0.51, 0.49]] },
];

test('a table: rows are layers, columns tokens, cells top-1 expert and weight', () => {
  const text = formatRoutingTable(layers, ['The', ' capital', '\n'], { width: 100 });
  assert.equal(
    text,
    [
      'pos        0      1      2',
      'token    The ·capi…      ⏎',
      'L0     3 .62 12 .50  5 1.0',
      'L7     0 .90      -  1 .51',
      '',
    ].join('\n'),
  );
});

test('columns that do not fit wrap into blocks within the width', () => {
  const many = Array.from({ length: 30 }, (_, i) => `t${i}`);
  const wide = [{ layer: 0, experts: many.map((_, i) => [i % 8]), weights: many.map(() => [0.5]) }];
  const text = formatRoutingTable(wide, many, { width: 60 });
  const lines = text.trimEnd().split('\n');
  for (const line of lines) assert.ok(Array.from(line).length <= 60, `line too wide: "${line}"`);
  const blocks = text.trimEnd().split('\n\n');
  assert.ok(blocks.length > 1);
  for (const block of blocks) assert.deepEqual(block.split('\n').map((l) => l.split(/\s+/)[0]), ['pos', 'token', 'L0']);
  // every position appears exactly once across the blocks
  const positions = blocks.flatMap((b) => b.split('\n')[0].trim().split(/\s+/).slice(1)).map(Number);
  assert.deepEqual(positions, many.map((_, i) => i));
});

test('positions can start later than 0 (generated tokens)', () => {
  const text = formatRoutingTable([{ layer: 1, experts: [[2]], weights: [[0.3]] }], ['x'], { firstPosition: 41 });
  assert.match(text.split('\n')[0], /41$/);
});

test('an empty sequence', () => {
  assert.equal(formatRoutingTable([], []), '(no tokens)\n');
});

test('float32 values print in their shortest round-tripping form', () => {
  for (const x of [0.1, 1 / 3, -2.5e-8, 123456.789, 3.4e38, 1e-45]) {
    const f = Math.fround(x);
    assert.equal(Math.fround(Number(formatF32(f))), f);
    assert.ok(formatF32(f).length <= 16);
  }
  assert.equal(formatF32(Math.fround(0.1)), '0.1');
  assert.equal(formatF32(0), '0');
  assert.throws(() => formatF32(NaN), (e: Error & { code?: string }) => e.code === 'NOT_FINITE');
  assert.throws(() => formatF32(Infinity), (e: Error & { code?: string }) => e.code === 'NOT_FINITE');
});
