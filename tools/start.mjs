// `npm start`: builds what is missing, then opens the product in a local VS Code (code-server, installed into the
// cache folder by tools/code-server.mjs) with this extension, the demo model opened on startup and the sample prompts
// (media/demo.prompts.md) in an editor. Prints the URL; Ctrl-C stops it.
//   npm start [-- --port N]        (PORT=N works too; default 8080 when free)
import { spawnSync } from 'node:child_process';
import { existsSync, copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, CACHE, ensureCodeServer, prepareProfile, startCodeServer, freePort } from './code-server.mjs';
import * as net from 'node:net';

function step(command, args) {
  const result = spawnSync(command, args, { stdio: 'inherit', cwd: ROOT });
  if (result.status !== 0) {
    console.error(`routescope: ${command} ${args.join(' ')} failed`);
    process.exit(1);
  }
}

function portFree(port) {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

if (!existsSync(join(ROOT, 'build', 'Release', 'routescope.node'))) step('npm', ['run', 'build:native']);
step(process.execPath, ['tools/build.mjs']);
if (!existsSync(join(ROOT, 'media', 'demo-model', 'config.json'))) {
  console.warn('routescope: media/demo-model is missing: the window opens without it (use "Routescope: Open Model…")');
}

const install = ensureCodeServer();
const argPort = process.argv.indexOf('--port');
let port = Number(argPort > 0 ? process.argv[argPort + 1] : process.env.PORT || 8080);
if (!(await portFree(port))) port = await freePort();

const dir = join(CACHE, 'start');
const { workspace } = prepareProfile(dir, {
  extensionDir: ROOT,
  settings: { 'routescope.openDemoOnStartup': true, 'workbench.colorTheme': 'Default Dark Modern' },
});
mkdirSync(workspace, { recursive: true });
const prompts = join(workspace, 'demo.prompts.md');
if (!existsSync(prompts)) copyFileSync(join(ROOT, 'media', 'demo.prompts.md'), prompts);

const server = await startCodeServer({ dir, port, install, stdio: 'inherit' });
const url = `${server.url}?folder=${encodeURIComponent(workspace)}`;
console.log(`\nroutescope: VS Code with Routescope is running at\n\n    ${url}\n\n(open it in a browser; Ctrl-C stops it)\n`);
const stop = () => {
  server.stop();
  process.exit(0);
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
server.child.on('exit', (code) => {
  console.error(`routescope: code-server exited (${code})`);
  process.exit(code ?? 1);
});
