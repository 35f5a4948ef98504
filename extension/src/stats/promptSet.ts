// A set of prompts for routing statistics, read from what a user has: prompt files (*.prompts.md sections, *.jsonl
// lines with "prompt" / "question"), a labelled task set (media/tasks/*.jsonl: items with "answer", scored by the
// evaluation harness), or a folder of text files (*.txt, *.md: one prompt each). Prompts are grouped by the input
// they came from (`file`), by their "skill" field (`skill`) or not at all (`none`). Files are read with the limits of
// io/files.ts; a malformed line is a one-line error naming the file and line. No vscode import.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FILE_KINDS, readTextFile } from '../io/files';
import { parseMarkdownPrompts } from '../prompts/parse';
import { readTasks, TaskError, type TaskItem } from '../adapt/tasks';

export type GroupBy = 'file' | 'skill' | 'none';
export const GROUP_BY: readonly GroupBy[] = ['file', 'skill', 'none'];

export interface SetPrompt {
  /** Where it came from, for lists and contexts: "eval-add-001", "demo.prompts.md: Addition", "notes/a.txt". */
  id: string;
  text: string;
  /** Index into PromptSet.groups. */
  group: number;
  /** The labelled item, when the set is a task set (accuracy can be measured). */
  task?: TaskItem;
}

export interface PromptSet {
  prompts: SetPrompt[];
  groups: string[];
  /** True when every prompt carries a labelled task item. */
  labelled: boolean;
  /** The inputs as given. */
  sources: string[];
}

export class PromptSetError extends Error {
  readonly code = 'BAD_PROMPTS';
}

const fail = (message: string): PromptSetError => new PromptSetError(message);
const TEXT_FILE = /\.(txt|md)$/i;

interface Raw { id: string; text: string; skill: string; task?: TaskItem }

function readJsonl(file: string): Raw[] {
  const text = readTextFile(file, FILE_KINDS.promptSet, fail);
  const lines = text.split('\n');
  const records: Record<string, unknown>[] = [];
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (error) {
      throw fail(`${file}:${i + 1}: invalid JSON (${(error as Error).message})`);
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw fail(`${file}:${i + 1}: expected a JSON object with a "prompt" or "question" field`);
    records.push(v as Record<string, unknown>);
  });
  // A task set (every item has an id and an answer) is read by the evaluation's reader, which checks the labels.
  if (records.length > 0 && records.every((r) => typeof r.id === 'string' && r.answer !== undefined)) {
    try {
      return readTasks(file).map((task) => ({ id: task.id, text: task.prompt, skill: task.skill, task }));
    } catch (error) {
      if (error instanceof TaskError) throw fail(error.message);
      throw error;
    }
  }
  let n = 0;
  return lines.flatMap((line, i) => {
    if (line.trim() === '') return [];
    const r = records[n++];
    const prompt = typeof r.prompt === 'string' ? r.prompt : typeof r.question === 'string' ? r.question : typeof r.text === 'string' ? r.text : undefined;
    if (prompt === undefined || prompt === '') throw fail(`${file}:${i + 1}: no "prompt", "question" or "text" string field`);
    const id = typeof r.id === 'string' || typeof r.id === 'number' ? String(r.id) : `${path.basename(file)}:${i + 1}`;
    return [{ id, text: prompt, skill: typeof r.skill === 'string' ? r.skill : '' }];
  });
}

function readMarkdown(file: string): Raw[] {
  const parsed = parseMarkdownPrompts(readTextFile(file, FILE_KINDS.promptSet, fail));
  if (parsed.prompts.length === 0) {
    // A plain text or Markdown file without "## " sections is one prompt.
    const text = readTextFile(file, FILE_KINDS.promptSet, fail).trim();
    return text ? [{ id: path.basename(file), text, skill: '' }] : [];
  }
  return parsed.prompts.map((p) => ({ id: `${path.basename(file)}: ${p.title}`, text: p.text, skill: '' }));
}

function readFolder(dir: string): Raw[] {
  const files = fs.readdirSync(dir, { withFileTypes: true })
    .filter((d) => d.isFile() && TEXT_FILE.test(d.name))
    .map((d) => d.name)
    .sort();
  if (files.length === 0) throw fail(`${dir}: no .txt or .md files in the folder`);
  return files.flatMap((name) => {
    const text = readTextFile(path.join(dir, name), FILE_KINDS.promptSet, fail).trim();
    return text ? [{ id: `${path.basename(dir)}/${name}`, text, skill: '' }] : [];
  });
}

function readSource(source: string): Raw[] {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(source);
  } catch {
    throw fail(`${source}: not found`);
  }
  if (stat.isDirectory()) return readFolder(source);
  if (/\.jsonl$/i.test(source)) return readJsonl(source);
  if (TEXT_FILE.test(source)) return readMarkdown(source);
  throw fail(`${source}: not a prompt set (expected a .jsonl file, a .md / .txt file or a folder of them)`);
}

/** Reads the inputs; `limit` keeps the first n prompts of each input. */
export function readPromptSet(sources: string[], groupBy: GroupBy, limit?: number): PromptSet {
  if (sources.length === 0) throw fail('no prompt set given');
  const groups: string[] = [];
  const groupIndex = (name: string): number => {
    let i = groups.indexOf(name);
    if (i < 0) i = groups.push(name) - 1;
    return i;
  };
  const prompts: SetPrompt[] = [];
  for (const source of sources) {
    let raw = readSource(source);
    if (limit !== undefined) raw = raw.slice(0, limit);
    if (raw.length === 0) throw fail(`${source}: no prompts`);
    for (const r of raw) {
      const group = groupBy === 'none' ? 'all' : groupBy === 'file' ? path.basename(source) : r.skill || '(no skill)';
      prompts.push({ id: r.id, text: r.text, group: groupIndex(group), ...(r.task ? { task: r.task } : {}) });
    }
  }
  if (groupBy === 'file' && new Set(sources.map((s) => path.basename(s))).size < sources.length) {
    throw fail('two inputs have the same name; --group-by file needs distinct file or folder names');
  }
  return { prompts, groups, labelled: prompts.every((p) => p.task !== undefined), sources: [...sources] };
}
