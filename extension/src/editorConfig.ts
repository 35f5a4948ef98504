// VS Code's configuration, read through settings.ts (the one settings reader): the current values, changes, and the
// one setting the editor writes (the C3PO reference set a user picks).
import * as vscode from 'vscode';
import { EDITOR_KEYS, readAdaptSettings, readEditorSettings, type AdaptSettings, type EditorSettings } from './settings';

const get = (key: string): unknown => vscode.workspace.getConfiguration().get(key);

export function editorSettings(): EditorSettings {
  return readEditorSettings(get);
}

/** Throws SettingsError naming a setting out of range. */
export function adaptSettings(): AdaptSettings {
  return readAdaptSettings(get);
}

/** Fires when one of the given editor settings changes. */
export function onDidChangeSettings(names: (keyof EditorSettings)[], listener: () => void): vscode.Disposable {
  return vscode.workspace.onDidChangeConfiguration((e) => {
    if (names.some((name) => e.affectsConfiguration(EDITOR_KEYS[name]))) listener();
  });
}

/** Remembers the C3PO reference set (workspace settings when a folder is open, else user settings). */
export async function saveReferenceSetting(dir: string): Promise<void> {
  const target = vscode.workspace.workspaceFolders?.length ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
  await vscode.workspace.getConfiguration().update(EDITOR_KEYS.c3poReference, dir, target);
}
