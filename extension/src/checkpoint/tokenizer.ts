// The model's tokenizer (tokenizer.json + tokenizer_config.json) through @huggingface/tokenizers, offline.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { FILE_KINDS, readTextFile, type FileKind } from '../io/files';
import { jsonErrorText } from '../../../common/src/jsonError';

export class TokenizerError extends Error {
  readonly code = 'NO_TOKENIZER';
}

export interface ModelTokenizer {
  encode(text: string): number[];
  decode(ids: readonly number[]): string;
  /** The text one token stands for, as a person would read it in a table header. */
  tokenText(id: number): string;
}

function readJson(file: string, kind: FileKind): object {
  if (!fs.existsSync(file)) throw new TokenizerError(`${file}: not found (pass --tokens to give token ids directly)`);
  const text = readTextFile(file, kind, (message) => new TokenizerError(message));
  try {
    const value: unknown = JSON.parse(text);
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error('not a JSON object');
    return value;
  } catch (error) {
    throw new TokenizerError(`${file}: invalid JSON (${jsonErrorText(error)})`);
  }
}

export function loadTokenizer(modelDir: string): ModelTokenizer {
  const tokenizerFile = path.join(modelDir, 'tokenizer.json');
  const configFile = path.join(modelDir, 'tokenizer_config.json');
  const tokenizerJson = readJson(tokenizerFile, FILE_KINDS.tokenizer);
  const config = fs.existsSync(configFile) ? readJson(configFile, FILE_KINDS.tokenizerConfig) : {};
  let tokenizer: Tokenizer;
  try {
    tokenizer = new Tokenizer(tokenizerJson, config);
  } catch (error) {
    throw new TokenizerError(`${tokenizerFile}: unsupported tokenizer (${(error as Error).message})`);
  }
  // Prompts get a BOS only where the model asks for one (tokenizer_config add_bos_token, as Llama/Mixtral do),
  // never the EOS some templates append: the text is a prefix to continue.
  const bosId = bosTokenId(tokenizer, config as Record<string, unknown>);
  return {
    encode: (text) => {
      const ids = tokenizer.encode(text, { add_special_tokens: false }).ids;
      return bosId !== undefined && ids[0] !== bosId ? [bosId, ...ids] : ids;
    },
    // The library refuses an empty list (e.g. generation that stopped at EOS first): that is the empty text.
    decode: (ids) => (ids.length === 0 ? '' : tokenizer.decode([...ids], { skip_special_tokens: false })),
    tokenText: (id) => {
      const piece = tokenizer.id_to_token(id);
      let decoded = tokenizer.decode([id], { skip_special_tokens: false });
      if (decoded === '' || decoded.includes('\uFFFD')) return piece ?? `#${id}`;
      // SentencePiece-style decoders drop a word-initial space when a token is decoded alone; keep it visible.
      if (piece && /^[\u2581\u0120]/.test(piece) && !/^\s/.test(decoded)) decoded = ` ${decoded}`;
      return decoded;
    },
  };
}

function bosTokenId(tokenizer: Tokenizer, config: Record<string, unknown>): number | undefined {
  if (config.add_bos_token !== true) return undefined;
  const bos = config.bos_token;
  const text = typeof bos === 'string' ? bos : typeof bos === 'object' && bos !== null ? (bos as { content?: unknown }).content : undefined;
  return typeof text === 'string' ? tokenizer.token_to_id(text) : undefined;
}
