// Patch commands: Edit Routing Patch (a JSON document), Clear Patch, and the Layers view's expert edits (Mask,
// Force, Bias…, Clear Expert Edits). Every edit goes through the session, which validates the result; a refused
// edit is reported with the validator's message.
import * as vscode from 'vscode';
import { biasOf, clearExpertEdits, type PatchEdit } from '../../../common/src/patchEdit';
import { PATCH_URI } from '../views/patchDocument';
import { expertFromArg, type CommandContext } from './context';

export function patchCommands(c: CommandContext) {
  const { session } = c;
  const refused = (message: string | undefined): void => {
    if (message) void vscode.window.showErrorMessage(`Routescope: ${message}`);
  };
  const edit = (e: PatchEdit): void => refused(session.editPatch(e));

  const editPatch = async (): Promise<void> => {
    const document = await vscode.workspace.openTextDocument(PATCH_URI);
    await vscode.languages.setTextDocumentLanguage(document, 'json');
    await vscode.window.showTextDocument(document, { preview: false });
  };

  const biasExpert = async (arg: unknown): Promise<void> => {
    const ref = expertFromArg(arg);
    if (!ref) return;
    const current = biasOf(session.patch, ref.layer, ref.expert);
    const value = await vscode.window.showInputBox({
      title: `Routescope: bias for expert ${ref.expert} at layer ${ref.layer}`,
      prompt: 'Added to the router logit at every position (0 removes the bias)',
      value: String(current || 1),
      validateInput: (v) => (Number.isFinite(Number(v)) && v.trim() !== '' ? undefined : 'Enter a number'),
    });
    if (value === undefined) return;
    edit({ op: 'bias', layer: ref.layer, expert: ref.expert, value: Number(value) });
  };

  const expertEdit = (op: 'mask' | 'force') => (arg: unknown): void => {
    const ref = expertFromArg(arg);
    if (ref) edit({ op, ...ref });
  };

  return {
    editPatch,
    clearPatch: () => edit({ op: 'clear' }),
    maskExpert: expertEdit('mask'),
    forceExpert: expertEdit('force'),
    biasExpert,
    clearExpertEdits: (arg: unknown): void => {
      const ref = expertFromArg(arg);
      if (ref) refused(session.trySetPatch(clearExpertEdits(session.patch, ref.layer, ref.expert)));
    },
  };
}
