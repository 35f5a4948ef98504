/** A character-level byte-level-BPE tokenizer.json: <unk> <s> </s> as ids 0..2, then one id per character of
 *  `chars` in order (no merges), for tests on fixture checkpoints whose vocabulary covers those ids. */
export function charTokenizerJson(chars: string[]): object {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  const byteLevel = (c: string): string => (c === ' ' ? '\u0120' : c === '\n' ? '\u010a' : c);
  chars.forEach((c, i) => (vocab[byteLevel(c)] = i + 3));
  const special = (id: number, content: string) => ({ id, content, special: true, single_word: false, lstrip: false, rstrip: false, normalized: false });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: [] },
  };
}

/** Ids 0..35: lower-case letters, space and . , ! ? (fixture checkpoints have vocab >= 36). */
export function tinyTokenizerJson(): object {
  return charTokenizerJson([' ', ...'abcdefghijklmnopqrstuvwxyz.,!?']);
}

export const TINY_TOKENIZER_CONFIG = { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' };
