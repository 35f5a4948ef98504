// The shared table of routing patches (test/fixtures/patch-cases.json), through the TypeScript validator; the
// engine's validator runs the same table in native/tests/patch_test.cpp, so both refuse a patch with one message.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PatchError, parsePatch, serializePatch, type PatchModelShape } from '../../common/src/patch';
import { ROOT } from '../helpers/cli';

interface PatchCase {
  name: string;
  patch: string;
  error: string | null;
  canonical?: string;
}

const table = JSON.parse(fs.readFileSync(path.join(ROOT, 'test', 'fixtures', 'patch-cases.json'), 'utf8')) as { model: PatchModelShape; cases: PatchCase[] };

test('the shared patch table has valid and invalid cases for every rule', () => {
  assert.ok(table.cases.length >= 50);
  assert.ok(table.cases.some((c) => c.error === null) && table.cases.some((c) => c.error !== null));
});

for (const c of table.cases) {
  test(`patch table: ${c.name}`, () => {
    if (c.error === null) {
      assert.equal(serializePatch(parsePatch(c.patch, 'patch', table.model)), c.canonical);
      return;
    }
    assert.throws(
      () => parsePatch(c.patch, 'patch', table.model),
      (error: unknown) => {
        assert.ok(error instanceof PatchError, `expected a PatchError, got ${String(error)}`);
        assert.equal(error.message, c.error);
        assert.ok(!error.message.includes('\n'), 'one line');
        return true;
      },
    );
  });
}
