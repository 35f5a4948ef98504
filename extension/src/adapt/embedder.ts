// Text embeddings for C3PO's neighbour search: an ONNX text embedder through onnxruntime-node (a folder with
// model.onnx + tokenizer.json, e.g. an export of all-MiniLM-L6-v2; mean pooling over the attention mask, L2 norm),
// or, when none is configured, the MoE's own hidden state mean-pooled at a chosen layer (L2-normalised).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import type * as Ort from 'onnxruntime-node';
import type { NativeSession } from '../engine/native';
import { l2normalize } from './math';
import { sha256File, type EmbedderIdentity } from './identity';
import { FILE_KINDS, openRegularFile, readTextFile } from '../io/files';

export interface Embedder {
  readonly identity: EmbedderIdentity;
  /** Embeds an item's text: its question (a text embedder) or its whole prompt (the model's own hidden state). */
  embed(text: string): Promise<Float32Array>;
  dispose(): Promise<void>;
}

export class EmbedderError extends Error {
  readonly code = 'BAD_EMBEDDER';
}

/**
 * The MoE's own hidden state entering `layer` (numLayers = the last layer's output), mean-pooled over an item's whole
 * prompt. Callers that run the prompt anyway take it from that forward (`forwardLayer`, TaskRunner.forward's
 * embedLayer) instead of calling embed(prompt), which runs the prompt once more.
 */
export class SelfEmbedder implements Embedder {
  readonly identity: EmbedderIdentity;
  constructor(
    private readonly session: NativeSession,
    private readonly encode: (text: string) => number[],
    readonly layer: number,
  ) {
    this.identity = { kind: 'self', layer, pooled: 'prompt' };
  }
  async embed(prompt: string): Promise<Float32Array> {
    const tokens = this.encode(prompt);
    if (tokens.length === 0) throw new EmbedderError(`cannot embed an empty text`);
    return l2normalize(await this.session.meanHidden(Int32Array.from(tokens), this.layer));
  }
  async dispose(): Promise<void> {}
}

/** The layer whose mean hidden state a prompt's forward should return for this embedder (self-embedding), if any. */
export function forwardLayer(embedder: Embedder): number | undefined {
  return embedder.identity.kind === 'self' ? embedder.identity.layer : undefined;
}

/**
 * An item's embedding: a text embedder's of its question; the model's own, pooled over the prompt, taken from the
 * prompt's forward when the caller ran it with forwardLayer() (`fromForward`), else by running the prompt.
 */
export async function itemEmbedding(embedder: Embedder, item: { question: string; prompt: string }, fromForward?: Float32Array): Promise<Float32Array> {
  if (embedder.identity.kind !== 'self') return embedder.embed(item.question);
  return fromForward ? l2normalize(fromForward) : embedder.embed(item.prompt);
}

type OrtModule = typeof Ort;

function loadOrt(): OrtModule {
  try {
    // Required lazily: the package is only needed when an ONNX embedder is configured.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('onnxruntime-node') as OrtModule;
  } catch (error) {
    throw new EmbedderError(
      `onnxruntime-node is not available (${(error as Error).message.split('\n')[0]}); install it (npm i onnxruntime-node) ` +
        'or leave the embedder unset to use the model\'s own hidden state',
    );
  }
}

export class OnnxEmbedder implements Embedder {
  private constructor(
    readonly identity: EmbedderIdentity,
    private readonly ort: OrtModule,
    private readonly session: Ort.InferenceSession,
    private readonly tokenizer: Tokenizer,
    private readonly maxTokens: number,
  ) {}

  static async open(dir: string, maxTokens = 256): Promise<OnnxEmbedder> {
    const folder = path.resolve(dir);
    const modelFile = path.join(folder, 'model.onnx');
    const tokenizerFile = path.join(folder, 'tokenizer.json');
    for (const file of [modelFile, tokenizerFile]) {
      if (!fs.existsSync(file)) throw new EmbedderError(`${file}: not found (an embedder folder holds model.onnx and tokenizer.json)`);
    }
    const fail = (message: string): Error => new EmbedderError(message);
    fs.closeSync(openRegularFile(modelFile, FILE_KINDS.onnxModel, fail).fd); // onnxruntime would block on a FIFO
    const configFile = path.join(folder, 'tokenizer_config.json');
    const configText = fs.existsSync(configFile) ? readTextFile(configFile, FILE_KINDS.tokenizerConfig, fail) : '{}';
    const tokenizerText = readTextFile(tokenizerFile, FILE_KINDS.tokenizer, fail);
    let tokenizer: Tokenizer;
    try {
      tokenizer = new Tokenizer(JSON.parse(tokenizerText), JSON.parse(configText));
    } catch (error) {
      throw new EmbedderError(`${tokenizerFile}: cannot load the tokenizer (${(error as Error).message})`);
    }
    const ort = loadOrt();
    let session: Ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(modelFile, { executionProviders: ['cpu'], intraOpNumThreads: 1 });
    } catch (error) {
      throw new EmbedderError(`${modelFile}: onnxruntime cannot load it (${(error as Error).message.split('\n')[0]})`);
    }
    if (!session.inputNames.includes('input_ids')) {
      throw new EmbedderError(`${modelFile}: expected an input named input_ids (inputs: ${session.inputNames.join(', ')})`);
    }
    const identity: EmbedderIdentity = {
      kind: 'onnx',
      dir: folder,
      model_sha256: sha256File(modelFile),
      tokenizer_sha256: sha256File(tokenizerFile),
    };
    return new OnnxEmbedder(identity, ort, session, tokenizer, maxTokens);
  }

  async embed(text: string): Promise<Float32Array> {
    let ids = this.tokenizer.encode(text).ids;
    if (ids.length === 0) throw new EmbedderError('cannot embed an empty text');
    if (this.maxTokens > 0 && ids.length > this.maxTokens) ids = ids.slice(0, this.maxTokens);
    const T = ids.length;
    const tensor = (values: number[]): Ort.Tensor => new this.ort.Tensor('int64', BigInt64Array.from(values, (v) => BigInt(v)), [1, T]);
    const feeds: Record<string, Ort.Tensor> = {};
    for (const name of this.session.inputNames) {
      if (name === 'input_ids') feeds[name] = tensor(ids);
      else if (name === 'attention_mask') feeds[name] = tensor(ids.map(() => 1));
      else if (name === 'token_type_ids') feeds[name] = tensor(ids.map(() => 0));
      else throw new EmbedderError(`${this.identity.kind === 'onnx' ? this.identity.dir : ''}: unsupported model input ${name}`);
    }
    const outputs = await this.session.run(feeds);
    const name = this.session.outputNames.includes('last_hidden_state') ? 'last_hidden_state' : this.session.outputNames[0];
    const out = outputs[name];
    const data = out.data as Float32Array;
    const dims = out.dims;
    if (dims.length === 2) return l2normalize(data); // already pooled ([1, D])
    if (dims.length !== 3 || dims[1] !== T) throw new EmbedderError(`unexpected embedder output ${name} of shape [${dims.join(', ')}]`);
    const D = dims[2];
    const mean = new Float32Array(D);
    // Mean pooling over the attention mask (all ones for a single unpadded text).
    for (let t = 0; t < T; t++) for (let d = 0; d < D; d++) mean[d] += data[t * D + d] / T;
    return l2normalize(mean);
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }
}
