// Prompt files (pure, no vscode): where each prompt of a *.prompts.md or *.prompts.jsonl file is and its text.
//   .md:    each "## " section is one prompt (its body without the surrounding blank lines); a fenced code block is
//           one prompt on its own (a section holding fenced blocks gives one prompt per block, not its body).
//   .jsonl: each line that is an object with a string "prompt" (preferred) or "question" field.
// Lines and characters are 0-based; `line` is where a code lens goes (the heading, fence or JSON line).
import { jsonErrorText } from '../../../common/src/jsonError';

export interface PromptRange {
  startLine: number;
  startCharacter: number;
  endLine: number;        // inclusive
  endCharacter: number;   // exclusive
}

export interface PromptEntry {
  /** A short name for lists: the section heading, the JSON "id", or the start of the text. */
  title: string;
  text: string;
  /** Line for the code lens. */
  line: number;
  /** The prompt's own text in the file (for a JSON line, the whole line). */
  range: PromptRange;
}

export interface PromptProblem {
  line: number;
  message: string;
}

export interface ParsedPrompts {
  prompts: PromptEntry[];
  problems: PromptProblem[];
}

export type PromptFileKind = 'markdown' | 'jsonl';

export function promptFileKind(fileName: string): PromptFileKind | undefined {
  if (/\.prompts\.md$/i.test(fileName)) return 'markdown';
  if (/\.prompts\.jsonl$/i.test(fileName)) return 'jsonl';
  return undefined;
}

export function parsePromptFile(fileName: string, text: string): ParsedPrompts {
  const kind = promptFileKind(fileName) ?? (/\.jsonl$/i.test(fileName) ? 'jsonl' : 'markdown');
  return kind === 'jsonl' ? parseJsonlPrompts(text) : parseMarkdownPrompts(text);
}

function shortTitle(text: string): string {
  const first = text.split('\n').find((l) => l.trim() !== '')?.trim() ?? '';
  return first.length > 48 ? `${first.slice(0, 47)}…` : first;
}

const FENCE = /^( {0,3})(`{3,}|~{3,})(.*)$/;
const TOP_HEADING = /^#(?!#)\s/;

/** The title of a "## " heading line (closing #s and surrounding blanks dropped), or undefined for other lines.
 *  A scan, not a regex with nested quantifiers: a heading of 5,000 blanks must not take cubic time. */
export function sectionTitle(line: string): string | undefined {
  if (!line.startsWith('##') || line.startsWith('###')) return undefined;
  let title = line.slice(2).trimEnd();
  let end = title.length;
  while (end > 0 && title[end - 1] === '#') end--;
  title = title.slice(0, end).trim();
  return title;
}

export function parseMarkdownPrompts(text: string): ParsedPrompts {
  const lines = text.split(/\r?\n/);
  const prompts: PromptEntry[] = [];
  const problems: PromptProblem[] = [];

  interface Section {
    title: string;
    headingLine: number;
    bodyStart: number;
    blocks: number;
  }
  let section: Section | undefined;

  const closeSection = (end: number): void => {
    // end = first line after the section
    if (!section || section.blocks > 0) {
      section = undefined;
      return;
    }
    let first = section.bodyStart;
    let last = end - 1;
    while (first <= last && lines[first].trim() === '') first++;
    while (last >= first && lines[last].trim() === '') last--;
    if (first > last) {
      problems.push({ line: section.headingLine, message: `section "${section.title}" has no prompt text` });
    } else {
      const body = lines.slice(first, last + 1).join('\n');
      prompts.push({
        title: section.title || shortTitle(body),
        text: body,
        line: section.headingLine,
        range: { startLine: first, startCharacter: 0, endLine: last, endCharacter: lines[last].length },
      });
    }
    section = undefined;
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[2];
      let j = i + 1;
      while (j < lines.length) {
        const close = FENCE.exec(lines[j]);
        if (close && close[2][0] === marker[0] && close[2].length >= marker.length && close[3].trim() === '') break;
        j++;
      }
      if (j >= lines.length) {
        problems.push({ line: i, message: 'code block is not closed' });
        closeSection(i);
        break;
      }
      const body = lines.slice(i + 1, j).join('\n');
      if (body.trim() === '') {
        problems.push({ line: i, message: 'empty code block' });
      } else {
        if (section) section.blocks++;
        const title = section
          ? `${section.title}${section.blocks > 1 ? ` (${section.blocks})` : ''}`
          : shortTitle(body);
        prompts.push({
          title,
          text: body,
          line: i,
          range: { startLine: i + 1, startCharacter: 0, endLine: j - 1, endCharacter: lines[j - 1].length },
        });
      }
      i = j;
      continue;
    }
    const title = sectionTitle(line);
    if (title !== undefined) {
      closeSection(i);
      section = { title, headingLine: i, bodyStart: i + 1, blocks: 0 };
      continue;
    }
    if (TOP_HEADING.test(line)) closeSection(i);
  }
  closeSection(lines.length);
  prompts.sort((a, b) => a.line - b.line);
  return { prompts, problems };
}

export function parseJsonlPrompts(text: string): ParsedPrompts {
  const lines = text.split(/\r?\n/);
  const prompts: PromptEntry[] = [];
  const problems: PromptProblem[] = [];
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (error) {
      problems.push({ line: i, message: `invalid JSON (${jsonErrorText(error)})` });
      return;
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      problems.push({ line: i, message: 'expected a JSON object with a "prompt" or "question" field' });
      return;
    }
    const record = value as Record<string, unknown>;
    const prompt = typeof record.prompt === 'string' ? record.prompt : typeof record.question === 'string' ? record.question : undefined;
    if (prompt === undefined || prompt === '') {
      problems.push({ line: i, message: 'no "prompt" or "question" string field' });
      return;
    }
    const id = typeof record.id === 'string' || typeof record.id === 'number' ? String(record.id) : undefined;
    prompts.push({
      title: id ?? shortTitle(prompt),
      text: prompt,
      line: i,
      range: { startLine: i, startCharacter: 0, endLine: i, endCharacter: line.length },
    });
  });
  return { prompts, problems };
}

/** The prompt whose range (or lens line) contains `line`, if any. */
export function promptAt(parsed: ParsedPrompts, line: number): PromptEntry | undefined {
  return parsed.prompts.find((p) => (line >= p.range.startLine && line <= p.range.endLine) || line === p.line);
}
