// Where Compare Two Prompts gets its two prompts (multi-line prompts included, e.g. "Q: …" then "A:"):
//   - two picked from the prompt files: the active editor's first, then the workspace's (routescope.promptFiles);
//   - the two "## " sections of the active editor (any Markdown, untitled too);
//   - a new editor holding an "## A" and a "## B" section to write them in, compared when the user says so;
//   - typed into two boxes, where "\n" is a line break.
import * as path from 'node:path';
import * as vscode from 'vscode';
import { oneLineText, plural } from '../../../common/src/format';
import { parseMarkdownPrompts, parsePromptFile, promptFileKind, type PromptEntry } from '../prompts/parse';
import { editorSettings } from '../editorConfig';
import { FILE_KINDS, readTextFile } from '../io/files';
import { askPrompt } from './prompts';
import type { Session } from '../session';

interface PromptChoice extends vscode.QuickPickItem {
  prompt?: string;
}

const EDITOR_TEMPLATE = `<!-- Routescope: Compare Two Prompts. Write prompt A under "## A" and prompt B under "## B" (several lines each), then
     press "Compare" in the notification, or run "Routescope: Compare Two Prompts" again with this editor active. -->

## A

Q: How much is 82 + 82?
A:

## B

Q: How much is 28 + 28?
A:
`;

/** Prompts of the active editor when it is a prompt file or Markdown, with where they come from. */
function editorPrompts(): { file: string; prompts: PromptEntry[] } | undefined {
  const editor = vscode.window.activeTextEditor;
  if (!editor) return undefined;
  const doc = editor.document;
  if (!promptFileKind(doc.fileName) && doc.languageId !== 'markdown') return undefined;
  return { file: doc.isUntitled ? 'this editor' : path.basename(doc.fileName), prompts: parsePromptFile(doc.fileName, doc.getText()).prompts };
}

/** Prompts of the workspace's prompt files (the active editor's file is listed first, by the caller). */
async function workspacePrompts(exclude: string | undefined): Promise<{ file: string; prompts: PromptEntry[] }[]> {
  const found: { file: string; prompts: PromptEntry[] }[] = [];
  const seen = new Set<string>(exclude ? [exclude] : []);
  for (const glob of editorSettings().promptFiles) {
    for (const uri of await vscode.workspace.findFiles(glob, '**/node_modules/**', 20)) {
      if (seen.has(uri.fsPath)) continue;
      seen.add(uri.fsPath);
      // Within the prompt-set size limit; a leading BOM dropped, as the editor does.
      const text = readTextFile(uri.fsPath, FILE_KINDS.promptSet).replace(/^\uFEFF/, '');
      found.push({ file: vscode.workspace.asRelativePath(uri), prompts: parsePromptFile(uri.fsPath, text).prompts });
    }
  }
  return found;
}

function choices(source: { file: string; prompts: PromptEntry[] }): PromptChoice[] {
  return source.prompts.map((p) => ({ label: p.title, description: source.file, detail: oneLineText(p.text.replace(/\n/g, ' ⏎ '), 120), prompt: p.text }));
}

/** Lets the user tick exactly two prompts; undefined when cancelled. */
async function pickFromFiles(items: PromptChoice[]): Promise<[string, string] | undefined> {
  const pick = vscode.window.createQuickPick<PromptChoice>();
  pick.canSelectMany = true;
  pick.matchOnDetail = true;
  pick.items = items;
  const title = (n: number): string => `Routescope: Compare Two Prompts — tick two prompts (${n} of 2 ticked), then Enter`;
  pick.title = title(0);
  pick.placeholder = 'Filter the prompts; Space ticks one';
  return new Promise((resolve) => {
    let done = false;
    pick.onDidChangeSelection((selected) => (pick.title = title(selected.length)));
    pick.onDidAccept(() => {
      const selected = pick.selectedItems;
      if (selected.length !== 2) {
        pick.title = `Routescope: Compare Two Prompts — tick exactly two prompts (${selected.length} ticked)`;
        return;
      }
      done = true;
      resolve([selected[0].prompt!, selected[1].prompt!]);
      pick.hide();
    });
    pick.onDidHide(() => {
      if (!done) resolve(undefined);
      pick.dispose();
    });
    pick.show();
  });
}

async function typeTwo(session: Session): Promise<[string, string] | undefined> {
  const ask = (n: 1 | 2, value: string) =>
    askPrompt(session, `Routescope: Compare Two Prompts (${n}/2)`, value, 'The prompt; type \\n for a line break (e.g. Q: How much is 82 + 82?\\nA:)');
  const unescape = (v: string): string => v.replace(/\\n/g, '\n');
  const first = await ask(1, session.runs.selected?.prompt.replace(/\n/g, '\\n') ?? '');
  if (first === undefined) return undefined;
  const second = await ask(2, first);
  if (second === undefined) return undefined;
  return [unescape(first), unescape(second)];
}

/** Opens an editor with an "## A" and a "## B" section; compares them when the user presses Compare. */
async function writeInEditor(): Promise<[string, string] | undefined> {
  const doc = await vscode.workspace.openTextDocument({ language: 'markdown', content: EDITOR_TEMPLATE });
  await vscode.window.showTextDocument(doc, { preview: false });
  const choice = await vscode.window.showInformationMessage('Routescope: write prompt A and prompt B in the new editor, then press Compare.', 'Compare');
  if (choice !== 'Compare') return undefined;
  const prompts = parseMarkdownPrompts(doc.getText()).prompts;
  if (prompts.length !== 2) {
    void vscode.window.showErrorMessage(`Routescope: the editor holds ${prompts.length} "## " sections with text; Compare Two Prompts needs exactly two (A and B).`);
    return undefined;
  }
  return [prompts[0].text, prompts[1].text];
}

/** The two prompts to compare: `arg` may already hold them ([a, b]); otherwise the user chooses where from. */
export async function pickTwoPrompts(session: Session, arg?: unknown): Promise<[string, string] | undefined> {
  if (Array.isArray(arg) && arg.length === 2 && arg.every((a) => typeof a === 'string')) return [arg[0], arg[1]];
  const active = editorPrompts();
  const fromFiles = [...(active && active.prompts.length ? [active] : []), ...(await workspacePrompts(vscode.window.activeTextEditor?.document.uri.fsPath))];
  const items = fromFiles.flatMap(choices);
  const sources: (vscode.QuickPickItem & { run: () => Promise<[string, string] | undefined> })[] = [];
  if (active?.prompts.length === 2) {
    const [a, b] = active.prompts;
    sources.push({ label: '$(split-horizontal) The two prompts of this editor', detail: `A: ${oneLineText(a.text, 60)} · B: ${oneLineText(b.text, 60)}`, run: async () => [a.text, b.text] });
  }
  if (items.length >= 2) sources.push({ label: '$(list-selection) Pick two prompts from the prompt files', detail: `${items.length} prompts in ${plural(fromFiles.length, 'file')}`, run: () => pickFromFiles(items) });
  sources.push({ label: '$(new-file) Write two prompts in a new editor', detail: 'an "## A" and a "## B" section, several lines each', run: writeInEditor });
  sources.push({ label: '$(edit) Type them', detail: 'one box each; \\n is a line break', run: () => typeTwo(session) });
  const source = await vscode.window.showQuickPick(sources, { title: 'Routescope: Compare Two Prompts — where are the prompts?' });
  return source?.run();
}
