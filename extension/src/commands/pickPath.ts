// Picking an input a command needs (a C3PO reference set, a task file): what the workspace already holds, a box for
// the path, or Browse… — VS Code's own open dialog (vscode.window.showOpenDialog), never a dialog of our own, so it
// lists the files of the machine the extension runs on in desktop, remote and browser-served VS Code alike.
import * as vscode from 'vscode';

export interface PathCandidate {
  label: string;
  description?: string;
  path: string;
}

export interface PathPick {
  title: string;
  placeHolder: string;
  /** What the workspace holds already, listed first. */
  found: PathCandidate[];
  /** A box to type the path in (what is typed stays what was typed): its prompt, first value and check. */
  type?: { label: string; prompt: string; value: string; validate: (path: string) => string | undefined };
  /** Browse…: what it says beside it, and the open dialog's options (its title is `title`; it opens in the workspace). */
  browse: { description: string; options: vscode.OpenDialogOptions };
  /** What a path picked in the dialog stands for (a reference set's manifest.json: its folder). */
  fromDialog?: (picked: string) => string;
}

/** The path picked, or undefined when the user dismissed every step. With nothing found and no box, the dialog opens
 *  at once. */
export async function pickPath(o: PathPick): Promise<string | undefined> {
  type Choice = vscode.QuickPickItem & { path?: string; action?: 'type' | 'browse' };
  let choice: Choice | undefined = { label: '', action: 'browse' };
  if (o.found.length > 0 || o.type) {
    choice = await vscode.window.showQuickPick<Choice>([
      ...o.found.map((c) => ({ label: c.label, description: c.description, path: c.path })),
      ...(o.type ? [{ label: o.type.label, action: 'type' as const }] : []),
      { label: '$(folder-opened) Browse…', description: o.browse.description, action: 'browse' },
    ], { title: o.title, placeHolder: o.placeHolder });
  }
  if (!choice) return undefined;
  if (choice.path) return choice.path;
  if (choice.action === 'type' && o.type) {
    const { prompt, value, validate } = o.type;
    const typed = await vscode.window.showInputBox({
      title: o.title,
      prompt,
      value,
      ignoreFocusOut: true,
      validateInput: (v) => (v.trim() === '' ? 'Enter a path' : validate(v.trim())),
    });
    return typed?.trim() || undefined;
  }
  const defaultUri = o.browse.options.defaultUri ?? vscode.workspace.workspaceFolders?.[0]?.uri;
  const uris = await vscode.window.showOpenDialog({ canSelectMany: false, ...o.browse.options, title: o.title, ...(defaultUri ? { defaultUri } : {}) });
  const picked = uris?.[0]?.fsPath;
  return picked && o.fromDialog ? o.fromDialog(picked) : picked;
}
