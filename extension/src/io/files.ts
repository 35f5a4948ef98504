// Reading the files a user hands us: only regular files, opened without blocking (a FIFO or a device in place of a
// file is a one-line error, never a hang or a read of /dev/zero until memory runs out), each kind within a size limit.
// The engine applies the same rule to config.json, generation_config.json and the index (native/src/util/files.h).
import * as fs from 'node:fs';

export interface FileKind {
  /** What the file is, as the error says it: "tokenizer.json", "a task file". */
  name: string;
  maxBytes: number;
}

const MiB = 2 ** 20;

/** The limits per kind (README "Reliability"). */
export const FILE_KINDS = {
  config: { name: 'config.json', maxBytes: 1 * MiB },
  tokenizer: { name: 'tokenizer.json', maxBytes: 128 * MiB },
  tokenizerConfig: { name: 'tokenizer_config.json', maxBytes: 16 * MiB },
  onnxModel: { name: 'an ONNX embedder model.onnx', maxBytes: 4096 * MiB },
  patch: { name: 'a routing patch', maxBytes: 64 * MiB },
  mix: { name: 'a --mix file', maxBytes: 1 * MiB },
  tasks: { name: 'a task file', maxBytes: 256 * MiB },
  promptSet: { name: 'a prompt set file', maxBytes: 256 * MiB },
  referenceManifest: { name: 'a reference manifest.json', maxBytes: 1 * MiB },
  referenceIndex: { name: 'a reference index.jsonl', maxBytes: 256 * MiB },
  referenceTensors: { name: 'a reference safetensors file', maxBytes: 2048 * MiB },
} satisfies Record<string, FileKind>;

export type MakeError = (message: string) => Error;

export class InputFileError extends Error {
  readonly code = 'BAD_FILE';
}

const defaultError: MakeError = (message) => new InputFileError(message);

function typeName(stat: fs.Stats): string {
  if (stat.isFIFO()) return 'a FIFO (named pipe)';
  if (stat.isCharacterDevice()) return 'a character device';
  if (stat.isBlockDevice()) return 'a block device';
  if (stat.isDirectory()) return 'a folder';
  if (stat.isSocket()) return 'a socket';
  return 'not a regular file';
}

export function formatLimit(bytes: number): string {
  if (bytes >= 2 ** 30 && bytes % 2 ** 30 === 0) return `${bytes / 2 ** 30} GiB`;
  if (bytes >= MiB && bytes % MiB === 0) return `${bytes / MiB} MiB`;
  return `${bytes} bytes`;
}

function errnoText(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  return code ?? (error as Error).message;
}

/** Opens a regular file without blocking; `kind` adds its size limit. The caller closes the descriptor. */
export function openRegularFile(file: string, kind?: FileKind, makeError: MakeError = defaultError): { fd: number; size: number } {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw makeError(`${file}: file not found`);
    if (code === 'EISDIR') throw makeError(`${file}: a folder, not a regular file`);
    if (code === 'ENXIO') throw makeError(`${file}: a socket, not a regular file`);
    throw makeError(`${file}: cannot open (${errnoText(error)})`);
  }
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw makeError(`${file}: ${typeName(stat)}, not a regular file`);
    if (kind && stat.size > kind.maxBytes) {
      throw makeError(`${file}: ${stat.size} bytes, over the ${formatLimit(kind.maxBytes)} limit for ${kind.name}`);
    }
    return { fd, size: stat.size };
  } catch (error) {
    fs.closeSync(fd);
    throw error;
  }
}

/** The whole file, within the kind's limit (also when it grows while being read). */
export function readRegularFile(file: string, kind: FileKind, makeError: MakeError = defaultError): Buffer {
  const { fd, size } = openRegularFile(file, kind, makeError);
  try {
    // One byte more than fstat said, so growth is seen.
    let buffer = Buffer.allocUnsafe(size + 1);
    let have = 0;
    for (;;) {
      if (have === buffer.length) {
        if (buffer.length > kind.maxBytes) {
          throw makeError(`${file}: grew past the ${formatLimit(kind.maxBytes)} limit for ${kind.name} while being read`);
        }
        const bigger = Buffer.allocUnsafe(Math.min(kind.maxBytes + 1, 2 * buffer.length));
        buffer.copy(bigger, 0, 0, have);
        buffer = bigger;
      }
      let n: number;
      try {
        n = fs.readSync(fd, buffer, have, buffer.length - have, null);
      } catch (error) {
        throw makeError(`${file}: cannot read (${errnoText(error)})`);
      }
      if (n === 0) break;
      have += n;
    }
    return buffer.subarray(0, have);
  } finally {
    fs.closeSync(fd);
  }
}

export function readTextFile(file: string, kind: FileKind, makeError: MakeError = defaultError): string {
  return readRegularFile(file, kind, makeError).toString('utf8');
}

/** Present in any form (a FIFO counts: reading it then says what is wrong); lstat/stat only, never blocks. */
export function fileExists(file: string): boolean {
  try {
    fs.statSync(file);
    return true;
  } catch {
    return false;
  }
}
