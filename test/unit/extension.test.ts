// The bundled extension entry (dist/extension.js) activates against a stub of the vscode API and registers what
// package.json contributes. (The real VS Code end-to-end tests come with the UI.)
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import Module from 'node:module';
import { ROOT } from '../helpers/cli';

interface Manifest {
  main: string;
  contributes: { commands: { command: string; title: string; category: string }[] };
}

test('dist/extension.js activates and registers every contributed command', () => {
  const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as Manifest;
  const main = path.join(ROOT, manifest.main);
  assert.ok(fs.existsSync(main), `${manifest.main} is not built`);

  const registered = new Map<string, () => unknown>();
  const lines: string[] = [];
  let shown = false;
  const vscodeStub = {
    window: {
      createOutputChannel: (name: string) => {
        assert.equal(name, 'Routescope');
        return { appendLine: (l: string) => lines.push(l), show: () => (shown = true), dispose: () => {} };
      },
    },
    commands: {
      registerCommand: (id: string, run: () => unknown) => {
        registered.set(id, run);
        return { dispose: () => {} };
      },
    },
  };
  const loader = Module as unknown as { _load: (request: string, parent: unknown, isMain: boolean) => unknown };
  const originalLoad = loader._load;
  loader._load = (request, parent, isMain) => (request === 'vscode' ? vscodeStub : originalLoad(request, parent, isMain));
  try {
    const extension = require(main) as { activate: (context: unknown) => void; deactivate: () => void };
    const subscriptions: unknown[] = [];
    extension.activate({ subscriptions });
    for (const { command, category } of manifest.contributes.commands) {
      assert.equal(category, 'Routescope');
      assert.ok(registered.has(command), `${command} contributed but not registered`);
    }
    registered.get('routescope.showEngineLog')!();
    assert.ok(shown);
    assert.match(lines.join('\n'), /engine .* loaded/);
    assert.ok(subscriptions.length >= 2);
    extension.deactivate();
  } finally {
    loader._load = originalLoad;
  }
});
