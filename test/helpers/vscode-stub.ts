// Extension modules loaded against a stand-in for the vscode API (not a test file): the module keeps the stand-in it
// was loaded with, so the hook is in place only while it loads.
import Module from 'node:module';

export async function withVscodeStub<T>(stub: unknown, load: () => Promise<T>): Promise<T> {
  const loader = Module as unknown as { _load: (request: string, parent: unknown, isMain: boolean) => unknown };
  const originalLoad = loader._load;
  loader._load = (request, parent, isMain) => (request === 'vscode' ? stub : originalLoad(request, parent, isMain));
  try {
    return await load();
  } finally {
    loader._load = originalLoad;
  }
}
