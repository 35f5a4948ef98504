// `routescope generate`: text generation, streamed to stdout as tokens arrive; with --json --routing, the routing of
// the generated positions.
import type { Command } from 'commander';
import { DEFAULT_MAX_NEW_TOKENS } from '../settings';
import { parseInteger, parseNumber } from './args';
import { intRow, writeJsonObject } from './output';
import { requireFiniteRouting, routingJson, routingRecorder } from './inspect';
import {
  action, commonOptions, engineCall, out, parseTokenInput, readPatch, resolveTokens, tokenOptions, tryTokenizer, withModel,
  type CommonOptions, type TokenOptions,
} from './setup';

interface GenerateOptions extends CommonOptions, TokenOptions {
  maxNewTokens?: string;
  temperature: string;
  topP: string;
  seed: string;
  patch?: string;
  routing?: boolean;
}

async function generate(options: GenerateOptions): Promise<void> {
  const explicitMax = options.maxNewTokens !== undefined;
  let maxNewTokens = explicitMax ? parseInteger('--max-new-tokens', options.maxNewTokens!, 1, 1_000_000) : DEFAULT_MAX_NEW_TOKENS;
  const temperature = parseNumber('--temperature', options.temperature, 0, 100);
  const topP = parseNumber('--top-p', options.topP, Number.MIN_VALUE, 1);
  const seed = parseInteger('--seed', options.seed, 0);
  const input = parseTokenInput(options);
  await withModel(options, async ({ model, info, dir }) => {
    const tokenizer = tryTokenizer(dir);
    const prompt = resolveTokens(input, dir, info, tokenizer, explicitMax ? maxNewTokens : 1);
    // Without --max-new-tokens, generation simply stops at the end of the context.
    if (!explicitMax && info.maxPositionEmbeddings > 0) maxNewTokens = Math.min(maxNewTokens, info.maxPositionEmbeddings - prompt.length);
    const patch = readPatch(options.patch, info);
    const session = model.createSession(prompt.length + maxNewTokens);
    const routing = options.json && options.routing ? routingRecorder(info) : undefined;

    // Streams text as tokens arrive; a token ending inside a multi-byte character waits for the next one.
    const streamed: number[] = [];
    let shown = '';
    const onToken = (token: number): void => {
      streamed.push(token);
      if (options.json) return;
      if (!tokenizer) {
        out(`${token} `);
        return;
      }
      const text = tokenizer.decode(streamed);
      if (text.endsWith('\uFFFD')) return;
      if (text.startsWith(shown)) out(text.slice(shown.length));
      else out(text); // decoding changed earlier text (rare); show the new piece whole
      shown = text;
    };
    if (!options.json) out(tokenizer && options.prompt !== undefined ? options.prompt : `${prompt.join(' ')} | `);
    const result = await engineCall(session, () =>
      session.generate(Int32Array.from(prompt), {
        ...(patch ? { patch } : {}),
        maxNewTokens,
        temperature,
        topP,
        seed,
        stopTokens: info.eosTokenIds,
        onToken,
        ...(routing ? { onLayer: routing.onLayer } : {}),
      }),
    );
    const generated = [...result.tokens];
    if (routing) requireFiniteRouting(dir, routing.layers.values(), prompt.length);
    if (options.json) {
      const entries: [string, string | string[]][] = [
        ['prompt_tokens', intRow(prompt)],
        ['tokens', intRow(generated)],
        ['text', JSON.stringify(tokenizer ? tokenizer.decode(generated) : null)],
      ];
      if (routing) {
        entries.push([
          'layers',
          [...routing.layers.values()].map((l) => {
            const from = Math.min(prompt.length, l.filled);
            const positions = Array.from({ length: l.filled - from }, (_, i) => from + i);
            return `{"layer":${l.layer},"positions":${intRow(positions)},${routingJson(l, from)}}`;
          }),
        ]);
      }
      writeJsonObject(out, entries);
      return;
    }
    if (tokenizer) {
      const text = tokenizer.decode(generated);
      if (text.startsWith(shown) && text.length > shown.length) out(text.slice(shown.length));
    }
    out('\n');
  });
}

export function registerGenerateCommand(program: Command): void {
  tokenOptions(commonOptions(program.command('generate').description('generate text, streaming it as tokens arrive')))
    .option('--max-new-tokens <n>', `tokens to generate at most (default ${DEFAULT_MAX_NEW_TOKENS}, within the context)`)
    .option('--temperature <t>', 'sampling temperature, 0 = greedy', '0')
    .option('--top-p <p>', 'nucleus sampling mass', '1')
    .option('--seed <n>', 'sampling seed', '0')
    .option('--patch <file>', 'routing patch JSON')
    .option('--routing', 'with --json: include the routing of the generated positions')
    .action(action(generate));
}
