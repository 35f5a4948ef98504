// Every adaptation hyperparameter is a VS Code setting whose default is the spec default in adapt/settings.ts; every
// setting is read by the one reader, extension/src/settings.ts, with the default package.json declares.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEFAULT_C3PO, DEFAULT_EMBEDDING, DEFAULT_HEADROOM, DEFAULT_REROUTE, SettingsError, dedupRule, readAdaptSettings, settingKeys } from '../../extension/src/adapt/settings';
import { rerouteOptions } from '../../extension/src/adapt/reroute';
import { DEFAULT_MAX_NEW_TOKENS, EDITOR_DEFAULTS, EDITOR_KEYS, readEditorSettings, settingKeys as settingKeysRead } from '../../extension/src/settings';
import { ROOT } from '../helpers/cli';

const properties = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).contributes.configuration.properties as Record<string, { default: unknown; description?: string; markdownDescription?: string }>;

test('package.json contributes every C3PO, rerouting, embedding and headroom setting with its default', () => {
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
  check(DEFAULT_HEADROOM, keys.headroom);
  assert.deepEqual([DEFAULT_C3PO.k, DEFAULT_C3PO.steps, DEFAULT_C3PO.coreExperts, DEFAULT_C3PO.dedupThreshold], [3, 10, 20, 0.95]);
  // The step on θ = log ω that matches the paper's step on ω (README "Test-time adaptation"), not 1e-2 → 1e-5.
  assert.deepEqual([DEFAULT_C3PO.lrStart, DEFAULT_C3PO.lrEnd, DEFAULT_C3PO.optionLoss], [1, 1e-3, false]);
  assert.deepEqual([DEFAULT_REROUTE.interval, DEFAULT_REROUTE.steps, DEFAULT_REROUTE.lr, DEFAULT_REROUTE.optimizer], [128, 5, 0.05, 'adam']);
  assert.deepEqual([DEFAULT_REROUTE.layerFraction, DEFAULT_REROUTE.resetAdamEachRound, DEFAULT_REROUTE.window], [0.5, false, 'context']);
});

test('dedup auto: the similarity cut for a text embedder, exact questions for the model\'s own embeddings; rerouting options reach the engine', () => {
  assert.equal(dedupRule(DEFAULT_C3PO, 'self'), 'exact-question');
  assert.equal(dedupRule(DEFAULT_C3PO, 'onnx'), 'similarity');
  assert.equal(dedupRule({ ...DEFAULT_C3PO, dedup: 'none' }, 'onnx'), 'none');
  const o = rerouteOptions({ ...DEFAULT_REROUTE, layers: [], window: 'since-last-round', resetAdamEachRound: true });
  assert.equal(o.sinceLastRound, true);
  assert.equal(o.resetAdamEachRound, true);
  assert.equal(rerouteOptions({ ...DEFAULT_REROUTE, layers: [] }).sinceLastRound, false);
  assert.throws(() => readAdaptSettings((key) => (key === 'routescope.c3po.dedup' ? 'sometimes' : undefined)), /routescope\.c3po\.dedup/);
  assert.throws(() => readAdaptSettings((key) => (key === 'routescope.headroom.candidates' ? -1 : undefined)), /routescope\.headroom\.candidates/);
});

test('readAdaptSettings: configured values override, mistyped ones fall back, out-of-range ones are named', () => {
  const s = readAdaptSettings((key) => ({ 'routescope.c3po.k': 5, 'routescope.c3po.steps': 'ten', 'routescope.reroute.layers': [1, 2] } as Record<string, unknown>)[key]);
  assert.equal(s.c3po.k, 5);
  assert.equal(s.c3po.steps, 10);
  assert.deepEqual(s.reroute.layers, [1, 2]);
  assert.throws(() => readAdaptSettings((key) => (key === 'routescope.reroute.layerFraction' ? 0 : undefined)), (e: Error) => e instanceof SettingsError && /routescope\.reroute\.layerFraction/.test(e.message));
});

test('one settings reader: every routescope.* setting package.json contributes is read by extension/src/settings.ts, and nothing else', () => {
  const contributed = Object.keys(properties).filter((k) => k.startsWith('routescope.')).sort();
  assert.deepEqual([...settingKeysRead()].sort(), contributed);
  for (const [name, key] of Object.entries(EDITOR_KEYS)) assert.deepEqual(properties[key].default, (EDITOR_DEFAULTS as Record<string, unknown>)[name], key);
  assert.equal(properties['routescope.maxNewTokens'].default, DEFAULT_MAX_NEW_TOKENS, 'the editor and the CLI generate the same number of tokens by default');
  const read = readEditorSettings((key) => ({ 'routescope.threads': 4, 'routescope.backend': 'tpu', 'routescope.routingPanel.defaultMetric': 'entropy' } as Record<string, unknown>)[key]);
  assert.equal(read.threads, 4);
  assert.equal(read.backend, 'auto', 'an unknown value falls back to the default');
  assert.equal(read.defaultMetric, 'entropy');
  assert.equal(readEditorSettings((key) => (key === 'routescope.activations' ? 'bf16' : undefined)).activations, 'bf16');
  assert.equal(readEditorSettings((key) => (key === 'routescope.activations' ? 'fp16' : undefined)).activations, 'fp32', 'an unknown precision falls back to fp32');
  assert.equal(readEditorSettings((key) => (key === 'routescope.kvCache' ? 'bf16' : undefined)).kvCache, 'bf16');
  assert.equal(readEditorSettings((key) => (key === 'routescope.kvCache' ? 'fp8' : undefined)).kvCache, 'fp32', 'an unknown KV cache dtype falls back to fp32');
});
