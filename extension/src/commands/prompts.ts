// Where a command's prompt comes from: its argument (a code lens), the editor selection, the prompt under the
// cursor in a prompt file, or an input box; and how it reaches the engine (text, or token ids without a tokenizer).
import * as vscode from 'vscode';
import { parsePromptFile, promptAt } from '../prompts/parse';
import type { PromptArgument } from '../prompts/codeLens';
import type { PromptInput } from '../runs/runner';
import type { Session } from '../session';

function promptFromEditor(): string | undefined {
  const editor = vscode.window.activeTextEditor;
  if (!editor) return undefined;
  const selected = editor.document.getText(editor.selection);
  if (selected.trim() !== '') return selected;
  const parsed = parsePromptFile(editor.document.fileName, editor.document.getText());
  if (!/\.prompts\.(md|jsonl)$/i.test(editor.document.fileName) && parsed.prompts.length === 0) return undefined;
  return promptAt(parsed, editor.selection.active.line)?.text;
}

/** An input box for one prompt; `textHint` replaces the hint shown when the model has a tokenizer. */
export async function askPrompt(session: Session, title: string, value?: string, textHint = 'Text to run through the model'): Promise<string | undefined> {
  return vscode.window.showInputBox({
    title,
    prompt: session.model?.tokenizer ? textHint : 'Token ids, separated by commas or spaces (the model has no tokenizer)',
    value: value ?? session.runs.selected?.prompt ?? '',
    ignoreFocusOut: true,
    validateInput: (v) => (v.trim() === '' ? 'Enter a prompt' : undefined),
  });
}

/** The prompt of a command: a string or code-lens argument, else the editor, else an input box. */
export async function resolvePrompt(session: Session, arg: unknown, title: string): Promise<string | undefined> {
  if (typeof arg === 'string') return arg;
  if (arg && typeof arg === 'object' && typeof (arg as PromptArgument).text === 'string') return (arg as PromptArgument).text;
  return promptFromEditor() ?? (await askPrompt(session, title));
}

/** Text for a model with a tokenizer; token ids ("1, 5, 9") for one without. */
export function toInput(session: Session, text: string): PromptInput {
  if (!session.model?.tokenizer) {
    const ids = text.split(/[\s,]+/).filter(Boolean).map(Number);
    if (ids.length === 0 || ids.some((n) => !Number.isInteger(n) || n < 0)) {
      throw new Error('this model has no tokenizer: give the prompt as token ids, e.g. "1, 5, 9"');
    }
    return { tokens: ids };
  }
  return { text };
}
