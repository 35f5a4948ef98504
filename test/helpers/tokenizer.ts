// A tiny character-level byte-level-BPE tokenizer.json (ids 0..35) for tests on fixture checkpoints (vocab >= 36).
export function tinyTokenizerJson(): object {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  [' ', ...'abcdefghijklmnopqrstuvwxyz.,!?'].forEach((c, i) => (vocab[c === ' ' ? 'Ġ' : c] = i + 3));
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

export const TINY_TOKENIZER_CONFIG = { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' };
