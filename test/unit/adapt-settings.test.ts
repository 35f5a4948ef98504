// Every adaptation hyperparameter is a VS Code setting whose default is the spec default in adapt/settings.ts.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEFAULT_C3PO, DEFAULT_EMBEDDING, DEFAULT_REROUTE, SettingsError, readSettings, settingKeys } from '../../extension/src/adapt/settings';
import { ROOT } from '../helpers/cli';

const properties = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).contributes.configuration.properties as Record<string, { default: unknown; description?: string; markdownDescription?: string }>;

test('package.json contributes every C3PO, rerouting and embedding setting with the spec default', () => {
  const keys = settingKeys();
  const check = (defaults: object, names: Record<string, string>): void => {
    for (const [k, name] of Object.entries(names)) {
      assert.ok(properties[name], `${name} missing from package.json`);
      assert.deepEqual(properties[name].default, (defaults as Record<string, unknown>)[k], name);
      assert.ok(properties[name].description || properties[name].markdownDescription, `${name} has no description`);
    }
  };
  check(DEFAULT_C3PO, keys.c3po);
  check(DEFAULT_REROUTE, keys.reroute);
  check(DEFAULT_EMBEDDING, keys.embedding);
  assert.deepEqual([DEFAULT_C3PO.k, DEFAULT_C3PO.steps, DEFAULT_C3PO.coreExperts, DEFAULT_C3PO.dedupThreshold], [3, 10, 20, 0.95]);
  assert.deepEqual([DEFAULT_REROUTE.interval, DEFAULT_REROUTE.steps, DEFAULT_REROUTE.lr, DEFAULT_REROUTE.optimizer], [128, 5, 0.05, 'adam']);
});

test('readSettings: configured values override, mistyped ones fall back, out-of-range ones are named', () => {
  const s = readSettings((key) => ({ 'routescope.c3po.k': 5, 'routescope.c3po.steps': 'ten', 'routescope.reroute.layers': [1, 2] } as Record<string, unknown>)[key]);
  assert.equal(s.c3po.k, 5);
  assert.equal(s.c3po.steps, 10);
  assert.deepEqual(s.reroute.layers, [1, 2]);
  assert.throws(() => readSettings((key) => (key === 'routescope.reroute.layerFraction' ? 0 : undefined)), (e: Error) => e instanceof SettingsError && /routescope\.reroute\.layerFraction/.test(e.message));
});
