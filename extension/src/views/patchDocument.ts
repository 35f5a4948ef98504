// "Edit Routing Patch": the current patch as a JSON document (routescope-patch:/current-patch.json). Saving it
// validates with common/src/patch.ts against the open model and makes it the current patch; an invalid patch is
// refused with the validator's message (the editor keeps the text).
import * as vscode from 'vscode';
import { parsePatch } from '../../../common/src/patch';
import type { Session } from '../session';

export const PATCH_URI = vscode.Uri.from({ scheme: 'routescope-patch', path: '/current-patch.json' });

export function patchText(session: Session): string {
  return `${JSON.stringify(session.patch, null, 2)}\n`;
}

export class PatchFileSystem implements vscode.FileSystemProvider {
  private readonly changes = new vscode.EventEmitter<vscode.FileChangeEvent[]>();
  readonly onDidChangeFile = this.changes.event;
  private mtime = Date.now();

  constructor(private readonly session: Session) {
    session.onDidChangePatch(() => {
      this.mtime = Date.now();
      this.changes.fire([{ type: vscode.FileChangeType.Changed, uri: PATCH_URI }]);
    });
  }

  watch(): vscode.Disposable {
    return new vscode.Disposable(() => undefined);
  }

  private check(uri: vscode.Uri): void {
    if (uri.path !== PATCH_URI.path) throw vscode.FileSystemError.FileNotFound(uri);
  }

  stat(uri: vscode.Uri): vscode.FileStat {
    if (uri.path === '/') return { type: vscode.FileType.Directory, ctime: 0, mtime: 0, size: 0 };
    this.check(uri);
    return { type: vscode.FileType.File, ctime: 0, mtime: this.mtime, size: Buffer.byteLength(patchText(this.session)) };
  }

  readDirectory(): [string, vscode.FileType][] {
    return [['current-patch.json', vscode.FileType.File]];
  }

  readFile(uri: vscode.Uri): Uint8Array {
    this.check(uri);
    return Buffer.from(patchText(this.session), 'utf8');
  }

  writeFile(uri: vscode.Uri, content: Uint8Array): void {
    this.check(uri);
    const text = Buffer.from(content).toString('utf8');
    try {
      const patch = parsePatch(text.trim() === '' ? '{"layers": {}}' : text, 'routing patch', this.session.modelShape);
      this.session.setPatch(patch, 'routing patch');
      this.session.output.appendLine(`routing patch set from the editor: ${JSON.stringify(patch)}`);
    } catch (error) {
      throw vscode.FileSystemError.NoPermissions((error as Error).message);
    }
  }

  createDirectory(): void {
    throw vscode.FileSystemError.NoPermissions('the routing patch is a single document');
  }

  delete(): void {
    throw vscode.FileSystemError.NoPermissions('use "Routescope: Clear Patch" to clear the routing patch');
  }

  rename(): void {
    throw vscode.FileSystemError.NoPermissions('the routing patch document cannot be renamed');
  }
}
