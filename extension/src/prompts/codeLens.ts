// Code lenses above every prompt of a prompt file (routescope.promptFiles globs). "Inspect routing" and
// "Generate" come from here; other features (C3PO re-mixing, rerouted generation) add theirs with
// addPromptLenses, in the order they register.
import * as vscode from 'vscode';
import { parsePromptFile, type PromptEntry } from './parse';

/** What a lens command receives: the prompt text and where it came from. */
export interface PromptArgument {
  text: string;
  title: string;
  uri: string;
  line: number;
}

export type PromptLensContributor = (prompt: PromptArgument, document: vscode.TextDocument) => vscode.Command[];

const contributors: PromptLensContributor[] = [
  (prompt) => [
    { title: '$(search) Inspect routing', command: 'routescope.inspectRouting', arguments: [prompt], tooltip: 'Run this prompt and show its routing' },
    { title: '$(play) Generate', command: 'routescope.generate', arguments: [prompt], tooltip: 'Generate a continuation, with routing' },
  ],
];

/** Adds lenses after the built-in ones; returns a disposable that removes them. */
export function addPromptLenses(contributor: PromptLensContributor): vscode.Disposable {
  contributors.push(contributor);
  changes.fire();
  return new vscode.Disposable(() => {
    const i = contributors.indexOf(contributor);
    if (i >= 0) contributors.splice(i, 1);
    changes.fire();
  });
}

const changes = new vscode.EventEmitter<void>();

export function promptArgument(document: vscode.TextDocument, entry: PromptEntry): PromptArgument {
  return { text: entry.text, title: entry.title, uri: document.uri.toString(), line: entry.line };
}

export class PromptCodeLensProvider implements vscode.CodeLensProvider {
  readonly onDidChangeCodeLenses = changes.event;

  provideCodeLenses(document: vscode.TextDocument): vscode.CodeLens[] {
    const { prompts } = parsePromptFile(document.fileName, document.getText());
    const lenses: vscode.CodeLens[] = [];
    for (const entry of prompts) {
      const range = new vscode.Range(entry.line, 0, entry.line, 0);
      const argument = promptArgument(document, entry);
      for (const contribute of contributors) {
        for (const command of contribute(argument, document)) lenses.push(new vscode.CodeLens(range, command));
      }
    }
    return lenses;
  }

  refresh(): void {
    changes.fire();
  }
}

/** The document selector for the prompt-file globs (routescope.promptFiles). */
export function promptSelector(globs: readonly string[]): vscode.DocumentFilter[] {
  return globs.map((pattern) => ({ pattern }));
}
