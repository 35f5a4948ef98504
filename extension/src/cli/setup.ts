// What every `routescope` command shares: the common flags, opening the model, the tokens (--prompt / --tokens),
// the patch file, errors (one line "routescope: <message>", exit 1; 2 for a malformed command line, 130 when
// cancelled) and Ctrl-C (the running engine call is cancelled; a command that works item by item stops between
// items; a second Ctrl-C exits at once).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import { loadAddon, packageRoot } from '../engine/addon';
import type { NativeModel, NativeModelInfo, NativeSession } from '../engine/native';
import { PatchError, parsePatch, serializePatch } from '../../../common/src/patch';
import { loadTokenizer, type ModelTokenizer } from '../checkpoint/tokenizer';
import { FILE_KINDS, readTextFile } from '../io/files';
import { CliError, UsageError, parseInteger, parseIntegerList } from './args';

export const DEMO_MODEL = path.join('media', 'demo-model');

export const out = (chunk: string): void => {
  process.stdout.write(chunk);
};

export function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ').trim();
}

// ---- Ctrl-C ---------------------------------------------------------------------------------------------------

let activeSession: NativeSession | undefined;
let itemLoop: { stop: boolean } | undefined;
let interrupted = false;

function onInterrupt(): void {
  if (itemLoop) {
    // reference build / eval: stop after the current item and keep what is done
    if (itemLoop.stop) process.exit(130);
    itemLoop.stop = true;
    process.stderr.write('\nroutescope: stopping after the current item (Ctrl-C again to quit at once)\n');
    activeSession?.cancel();
    return;
  }
  if (interrupted || !activeSession) process.exit(130); // nothing to cancel, or asked twice
  interrupted = true;
  activeSession.cancel();
}

export function installInterrupt(): void {
  process.on('SIGINT', onInterrupt);
  process.on('SIGTERM', onInterrupt);
}

/** Runs one engine call with Ctrl-C mapped to Session.cancel(). */
export async function engineCall<T>(session: NativeSession, call: () => Promise<T>): Promise<T> {
  activeSession = session;
  try {
    return await call();
  } finally {
    activeSession = undefined;
  }
}

/** Runs a command that works item by item on `session`: Ctrl-C cancels the item in flight and `shouldStop` turns
 *  true, so the command ends after it, keeping what is done. */
export async function itemByItem<T>(session: NativeSession, run: (shouldStop: () => boolean) => Promise<T>): Promise<T> {
  const loop = { stop: false };
  itemLoop = loop;
  activeSession = session;
  try {
    return await run(() => loop.stop);
  } finally {
    itemLoop = undefined;
    activeSession = undefined;
  }
}

// ---- errors ---------------------------------------------------------------------------------------------------

/** Engine and library errors → CliError; anything unknown is reported as internal. */
export function toCliError(error: unknown): CliError {
  if (error instanceof CliError) return error;
  if (error instanceof Error) {
    const code = (error as Error & { code?: unknown }).code;
    if (code === 'CANCELLED' || interrupted) return new CliError('cancelled', 130);
    if (typeof code === 'string' && code !== '') return new CliError(oneLine(error.message));
    return new CliError(`internal error: ${oneLine(error.message)}`);
  }
  return new CliError(`internal error: ${String(error)}`);
}

export function fail(error: unknown): void {
  const cliError = toCliError(error);
  process.stderr.write(`routescope: ${oneLine(cliError.message)}\n`);
  if (process.env.ROUTESCOPE_DEBUG && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
  process.exitCode = cliError.exitCode;
}

/** A command's action: its errors become the one-line report and exit code. */
export function action<T>(run: (options: T) => Promise<void>): (options: T) => Promise<void> {
  return async (options: T) => {
    try {
      await run(options);
    } catch (error) {
      fail(error);
    }
  };
}

/** Options after the subcommand belong to it; commander's own errors are one line too. */
export function oneLineErrors(command: Command): Command {
  return command.exitOverride().configureOutput({
    outputError: (text, write) => write(`routescope: ${oneLine(text.replace(/^error:\s*/i, ''))}\n`),
  });
}

// ---- flags ----------------------------------------------------------------------------------------------------

export interface CommonOptions {
  model?: string;
  threads?: number;
  backend?: 'auto' | 'cpu' | 'cuda';
  activations?: 'fp32' | 'bf16';
  weights?: 'auto' | 'mapped' | 'resident';
  kvCache?: 'fp32' | 'bf16';
  json?: boolean;
}

export function commonOptions(command: Command): Command {
  return command
    .option('--model <dir>', `Hugging Face model folder (default: the demo model, ${DEMO_MODEL})`)
    .addOption(new Option('--threads <n>', 'engine threads (default: all cores)').argParser((v) => parseInteger('--threads', v, 1, 4096)))
    .addOption(new Option('--backend <name>', 'compute backend').choices(['auto', 'cpu', 'cuda']))
    .addOption(new Option('--activations <precision>', 'fp32 (default) or bf16: prefill activations rounded to bf16 for BF16 weights, as llama.cpp').choices(['fp32', 'bf16']))
    .addOption(new Option('--weights <where>', 'auto (default: in memory when the files take at most half of the available memory), mapped or resident').choices(['auto', 'mapped', 'resident']))
    .addOption(new Option('--kv-cache <dtype>', 'fp32 (default) or bf16: keys and values cached as bf16, half the KV memory and decode attention reads').choices(['fp32', 'bf16']))
    .option('--json', 'print one JSON object for scripts');
}

export interface TokenOptions {
  prompt?: string;
  tokens?: string;
}

export function tokenOptions(command: Command): Command {
  return command
    .option('--prompt <text>', 'text, encoded with the model folder\'s tokenizer.json')
    .option('--tokens <ids>', 'token ids, comma-separated (no tokenizer needed)');
}

// ---- the model, its tokens, a patch ---------------------------------------------------------------------------

function resolveModelDir(flag: string | undefined): string {
  if (flag === undefined) {
    const demo = path.join(packageRoot(), DEMO_MODEL);
    if (!fs.existsSync(path.join(demo, 'config.json'))) {
      throw new CliError(`no --model given and the demo model is missing (${demo}); pass --model DIR`);
    }
    return demo;
  }
  const dir = path.resolve(flag);
  let stat: fs.Stats;
  try {
    stat = fs.statSync(dir);
  } catch {
    throw new CliError(`${flag}: model folder not found`);
  }
  if (!stat.isDirectory()) throw new CliError(`${flag}: not a folder (--model takes a Hugging Face model folder)`);
  return dir;
}

export interface OpenModel {
  model: NativeModel;
  info: NativeModelInfo;
  dir: string;
}

export function openModel(options: CommonOptions): OpenModel {
  const dir = resolveModelDir(options.model);
  const model = loadAddon().loadModel(dir, {
    ...(options.threads !== undefined ? { threads: options.threads } : {}),
    ...(options.backend !== undefined ? { backend: options.backend } : {}),
    ...(options.activations !== undefined ? { activations: options.activations } : {}),
    ...(options.weights !== undefined ? { weights: options.weights } : {}),
    ...(options.kvCache !== undefined ? { kvCache: options.kvCache } : {}),
  });
  return { model, info: model.info(), dir };
}

/** Opens the model, runs `body`, closes the model whatever happens. */
export async function withModel<T>(options: CommonOptions, body: (opened: OpenModel) => Promise<T>): Promise<T> {
  const opened = openModel(options);
  try {
    return await body(opened);
  } finally {
    opened.model.close();
  }
}

export function tryTokenizer(dir: string): ModelTokenizer | undefined {
  try {
    return loadTokenizer(dir);
  } catch {
    return undefined;
  }
}

/** --prompt or --tokens, checked for form before the model loads. */
export type TokenInput = { flag: '--tokens'; ids: number[] } | { flag: '--prompt'; text: string };

export function parseTokenInput(options: TokenOptions): TokenInput {
  if ((options.prompt === undefined) === (options.tokens === undefined)) {
    throw new UsageError('give exactly one of --prompt TEXT or --tokens 1,2,3');
  }
  if (options.tokens !== undefined) return { flag: '--tokens', ids: parseIntegerList('--tokens', options.tokens, Number.MIN_SAFE_INTEGER) };
  return { flag: '--prompt', text: options.prompt! };
}

/** The token ids, checked against the vocabulary and the context length (`reserve` = tokens still to come). */
export function resolveTokens(input: TokenInput, dir: string, info: NativeModelInfo, tokenizer: ModelTokenizer | undefined, reserve = 0): number[] {
  let tokens: number[];
  if (input.flag === '--tokens') {
    tokens = input.ids;
  } else {
    const tok = tokenizer ?? loadTokenizer(dir); // throws the tokenizer's own message when absent
    tokens = tok.encode(input.text);
    if (tokens.length === 0) throw new CliError('--prompt: the text encodes to no tokens');
  }
  checkTokens(input.flag, tokens, info, reserve);
  return tokens;
}

export function checkTokens(flag: string, tokens: readonly number[], info: NativeModelInfo, reserve = 0): void {
  const bad = tokens.find((t) => !Number.isInteger(t) || t < 0 || t >= info.vocabSize);
  if (bad !== undefined) {
    throw new CliError(
      `${flag}: token id ${bad} is outside the vocabulary of ${path.join(info.dir, 'config.json')} (vocab_size=${info.vocabSize}: ids 0..${info.vocabSize - 1})`,
    );
  }
  const limit = info.maxPositionEmbeddings;
  if (limit > 0 && tokens.length + reserve > limit) {
    const what = reserve > 0 ? `${tokens.length} tokens + ${reserve} new tokens` : `${tokens.length} tokens`;
    throw new CliError(`${flag}: ${what} exceed max_position_embeddings=${limit} of ${path.join(info.dir, 'config.json')}`);
  }
}

/** The --patch file, validated against the model, as the JSON the engine reads. */
export function readPatch(file: string | undefined, info: NativeModelInfo): string | undefined {
  if (file === undefined) return undefined;
  if (!fs.existsSync(file)) throw new CliError(`${file}: patch file not found`);
  const text = readTextFile(file, FILE_KINDS.patch, (message) => new CliError(message));
  try {
    return serializePatch(parsePatch(text, file, info));
  } catch (error) {
    if (error instanceof PatchError) throw new CliError(error.message);
    throw error;
  }
}

export function checkLayers(flag: string, layers: number[], info: NativeModelInfo): void {
  for (const layer of layers) {
    if (layer >= info.numLayers) throw new CliError(`${flag}: layer ${layer} is out of range (the model has ${info.numLayers} layers: 0..${info.numLayers - 1})`);
    if (!info.moeLayers.includes(layer)) throw new CliError(`${flag}: layer ${layer} is a dense layer without a router`);
  }
}

export function terminalWidth(): number {
  const columns = process.stdout.columns || Number(process.env.COLUMNS) || 100;
  return Math.max(40, columns);
}

export function labelFor(tokenizer: ModelTokenizer | undefined, id: number): string {
  return tokenizer ? tokenizer.tokenText(id) : `#${id}`;
}
