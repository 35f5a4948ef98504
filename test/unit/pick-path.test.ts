// The pickers of the Re-mix reference set and the headroom task file (extension/src/commands/pickPath.ts) against a
// stand-in for the vscode API: Browse… opens VS Code's own open dialog (showOpenDialog, which remote and
// browser-served VS Code draw themselves) in the workspace with the caller's filters; a manifest.json picked there
// stands for its folder; with nothing found the dialog opens at once.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { withVscodeStub } from '../helpers/vscode-stub';

interface Calls {
  quickPick: { items: { label: string; description?: string; path?: string; action?: string }[]; options: unknown }[];
  openDialog: Record<string, unknown>[];
  inputBox: Record<string, unknown>[];
}

type Answers = { pick?: (items: Calls['quickPick'][number]['items']) => unknown; dialog?: string[]; typed?: string };
let answers: Answers = {};
let calls: Calls = { quickPick: [], openDialog: [], inputBox: [] };
const vscodeStub = {
  window: {
    showQuickPick: async (items: Calls['quickPick'][number]['items'], options: unknown) => {
      calls.quickPick.push({ items, options });
      return answers.pick?.(items);
    },
    showOpenDialog: async (options: Record<string, unknown>) => {
      calls.openDialog.push(options);
      return answers.dialog?.map((fsPath) => ({ fsPath }));
    },
    showInputBox: async (options: Record<string, unknown>) => {
      calls.inputBox.push(options);
      return answers.typed;
    },
  },
  workspace: { workspaceFolders: [{ uri: { fsPath: '/work/space', scheme: 'file' } }] },
};

/** pickPath with `next` standing in for the user (the module is loaded once, with the stand-in for vscode). */
async function withVscode(next: Answers): Promise<{ pickPath: typeof import('../../extension/src/commands/pickPath').pickPath; calls: Calls }> {
  answers = next;
  calls = { quickPick: [], openDialog: [], inputBox: [] };
  const { pickPath } = await withVscodeStub(vscodeStub, () => import('../../extension/src/commands/pickPath'));
  return { pickPath, calls };
}

const reference = {
  title: 'Re-mix needs a reference set',
  placeHolder: 'saved to routescope.c3po.reference',
  found: [{ label: 'ref-a', description: 'sets/ref-a', path: '/work/space/sets/ref-a' }],
  type: { label: 'Type the folder\'s path…', prompt: 'the folder', value: '/work/space/', validate: () => undefined },
  browse: { description: 'the folder or its manifest.json', options: { canSelectFolders: true, canSelectFiles: true, filters: { 'Reference set manifest': ['json'] }, openLabel: 'Use Reference Set' } },
  fromDialog: (p: string) => (p.endsWith('/manifest.json') ? p.slice(0, -'/manifest.json'.length) : p),
};

test('Browse… opens VS Code\'s open dialog in the workspace with the picker\'s filters; a manifest.json stands for its folder', async () => {
  const { pickPath, calls } = await withVscode({ pick: (items) => items.find((i) => i.action === 'browse'), dialog: ['/data/ref/manifest.json'] });
  assert.equal(await pickPath(reference), '/data/ref');
  assert.deepEqual(calls.quickPick[0].items.map((i) => i.label), ['ref-a', 'Type the folder\'s path…', '$(folder-opened) Browse…']);
  assert.equal(calls.openDialog.length, 1);
  const options = calls.openDialog[0];
  assert.equal(options.canSelectFiles, true);
  assert.equal(options.canSelectFolders, true);
  assert.equal(options.canSelectMany, false);
  assert.deepEqual(options.filters, { 'Reference set manifest': ['json'] });
  assert.equal(options.title, reference.title);
  assert.equal((options.defaultUri as { fsPath: string }).fsPath, '/work/space');
});

test('a set found in the workspace is taken without a dialog; a typed path is what was typed; dismissing gives nothing', async () => {
  for (const [answers, want] of [
    [{ pick: (items: { path?: string }[]) => items[0] }, '/work/space/sets/ref-a'],
    [{ pick: (items: { action?: string }[]) => items.find((i) => i.action === 'type'), typed: '  /data/typed-ref ' }, '/data/typed-ref'],
    [{ pick: () => undefined }, undefined],
    [{ pick: (items: { action?: string }[]) => items.find((i) => i.action === 'browse') }, undefined],
  ] as const) {
    const { pickPath, calls } = await withVscode(answers);
    assert.equal(await pickPath(reference), want);
    if (want === '/work/space/sets/ref-a') assert.equal(calls.openDialog.length, 0);
  }
});

test('the headroom task file: with no .jsonl in the workspace the open dialog (files, .jsonl) opens at once', async () => {
  const { pickPath, calls } = await withVscode({ dialog: ['/data/tasks.jsonl'] });
  const file = await pickPath({
    title: 'Routing headroom: a task file',
    placeHolder: 'Labelled items (JSONL)',
    found: [],
    browse: { description: 'a .jsonl file', options: { canSelectFiles: true, canSelectFolders: false, filters: { 'Labelled items (JSONL)': ['jsonl'] }, openLabel: 'Analyse' } },
  });
  assert.equal(file, '/data/tasks.jsonl');
  assert.equal(calls.quickPick.length, 0);
  assert.deepEqual(calls.openDialog[0].filters, { 'Labelled items (JSONL)': ['jsonl'] });
  assert.equal(calls.openDialog[0].canSelectFiles, true);
  assert.equal(calls.openDialog[0].canSelectFolders, false);
});
