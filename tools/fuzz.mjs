// `npm run fuzz`: every fuzz target for a share of a time budget, then a summary; exit 1 on any crash, hang or
// out-of-memory. Native targets are libFuzzer harnesses (native/fuzz, ASan + UBSan, built with clang into
// build/fuzz); the TypeScript readers run under a seeded mutation fuzzer (test/fuzz/js-fuzz.ts).
//   node tools/fuzz.mjs [--seconds 600] [--targets a,b] [--seed N] [--quick]
// --quick: the short seeded run of `npm test` (60 s in all unless --seconds says otherwise).
// Inputs: fuzz/corpus/<target> (committed seeds) and fuzz/regressions/<target> (every crash found, replayed first).
// Working corpora and crash artifacts: build/fuzz-work/{full,quick}/<target>/.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { ensureAptPackages } from './apt.mjs';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const argv = process.argv.slice(2);
const flag = (name, fallback) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : fallback;
};
const quick = argv.includes('--quick');
const totalSeconds = Number(flag('seconds', quick ? '60' : '600'));
const seed = Number(flag('seed', quick ? '1' : String(Date.now() % 1_000_000)));
if (!(totalSeconds > 0) || !Number.isInteger(seed)) {
  console.error('routescope fuzz: --seconds must be a positive number and --seed an integer');
  process.exit(2);
}

const NATIVE = ['safetensors', 'config', 'patch'];
const JS = ['reference', 'prompts', 'tokenizer'];
const selected = (flag('targets', [...NATIVE, ...JS].join(',')) ?? '').split(',').filter(Boolean);
for (const t of selected) {
  if (!NATIVE.includes(t) && !JS.includes(t)) {
    console.error(`routescope fuzz: unknown target ${t} (${[...NATIVE, ...JS].join(', ')})`);
    process.exit(2);
  }
}
const share = totalSeconds / selected.length;
const buildDir = path.join(root, 'build', 'fuzz');
// The quick run starts from the committed corpus every time, so `npm test` runs the same inputs for a given seed
// (up to timing); a full run keeps growing its working corpus across runs.
const workRoot = path.join(root, 'build', 'fuzz-work', quick ? 'quick' : 'full');
if (quick) fs.rmSync(workRoot, { recursive: true, force: true });

// ---------------------------------------------------------------------------------------------------------------
// Builds.

function have(command) {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
}

/** clang with libFuzzer and the sanitizer runtimes (clang, libclang-rt-<major>-dev), installed when missing. */
function ensureFuzzToolchain() {
  const why = 'npm test builds the native fuzz targets with clang, libFuzzer, ASan and UBSan';
  if (!have('clang++')) ensureAptPackages(['clang'], why);
  const probe = fs.mkdtempSync(path.join(os.tmpdir(), 'routescope-fuzz-probe-'));
  try {
    fs.writeFileSync(path.join(probe, 'f.cpp'), 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n');
    const link = () => spawnSync('clang++', ['-fsanitize=fuzzer,address,undefined', 'f.cpp', '-o', 'f'], { cwd: probe, stdio: 'ignore' }).status === 0;
    if (link()) return;
    const major = spawnSync('clang++', ['-dumpversion'], { encoding: 'utf8' }).stdout.trim().split('.')[0];
    ensureAptPackages([`libclang-rt-${major}-dev`], `${why}: libFuzzer and the sanitizer runtimes`);
    if (!link()) throw new Error('clang++ cannot link a libFuzzer target with ASan and UBSan (-fsanitize=fuzzer,address,undefined)');
  } finally {
    fs.rmSync(probe, { recursive: true, force: true });
  }
}

function buildNative() {
  ensureFuzzToolchain();
  const started = Date.now();
  if (!fs.existsSync(path.join(buildDir, 'build.ninja')) && !fs.existsSync(path.join(buildDir, 'Makefile'))) {
    const generator = have('ninja') ? ['-G', 'Ninja'] : [];
    const cfg = spawnSync('cmake', ['-S', root, '-B', buildDir, ...generator, '-DCMAKE_CXX_COMPILER=clang++',
      '-DCMAKE_BUILD_TYPE=RelWithDebInfo', '-DRS_FUZZ=ON', '-DRS_CUDA=OFF', '-DRS_BUILD_TESTS=OFF'], { encoding: 'utf8' });
    if (cfg.status !== 0) throw new Error(`configuring the fuzz build failed:\n${cfg.stdout}${cfg.stderr}`);
  }
  const jobs = process.env.ROUTESCOPE_FUZZ_JOBS ?? '2';
  const build = spawnSync('cmake', ['--build', buildDir, '-j', jobs, '--target', ...NATIVE.map((t) => `${t}_fuzz`)], { encoding: 'utf8' });
  if (build.status !== 0) {
    const lines = `${build.stdout}${build.stderr}`.split('\n').filter((l) => /error|FAILED/.test(l)).slice(0, 20).join('\n');
    throw new Error(`building the fuzz targets failed:\n${lines}`);
  }
  return (Date.now() - started) / 1000;
}

async function buildJs() {
  const esbuild = await import('esbuild');
  await esbuild.build({
    entryPoints: [path.join(root, 'test', 'fuzz', 'js-fuzz.ts')],
    outfile: path.join(buildDir, 'js-fuzz.js'),
    absWorkingDir: root,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    external: ['vscode', '*.node', 'onnxruntime-node'],
    logLevel: 'warning',
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Runs.

/** Spawns a fuzzer, keeps its output, and kills it when it outlives `limitSeconds`. */
function runProcess(command, args, options, limitSeconds, onLine) {
  return new Promise((resolve) => {
    const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    let lastProgress = Date.now();
    let killedForHang = false;
    const consume = (chunk) => {
      const text = chunk.toString();
      output += text;
      if (output.length > 4_000_000) output = output.slice(-2_000_000);
      lastProgress = Date.now();
      for (const line of text.split('\n')) if (line) onLine?.(line);
    };
    child.stdout.on('data', consume);
    child.stderr.on('data', consume);
    const watchdog = setInterval(() => {
      // libFuzzer handles its own per-input timeout; this catches a process that stops talking altogether.
      if (Date.now() - lastProgress > 30_000) {
        killedForHang = true;
        child.kill('SIGKILL');
      }
    }, 1000);
    const hardStop = setTimeout(() => {
      killedForHang = true;
      child.kill('SIGKILL');
    }, (limitSeconds + 120) * 1000);
    child.on('close', (code, signal) => {
      clearInterval(watchdog);
      clearTimeout(hardStop);
      resolve({ code, signal, output, killedForHang });
    });
  });
}

function ensureDir(dir) {
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

async function runNative(target, seconds) {
  const work = ensureDir(path.join(workRoot, target));
  const corpus = ensureDir(path.join(work, 'corpus'));
  const artifacts = ensureDir(path.join(work, 'artifacts')) + path.sep;
  const dirs = [corpus, path.join(root, 'fuzz', 'corpus', target), path.join(root, 'fuzz', 'regressions', target)].filter(
    (d) => fs.existsSync(d),
  );
  const dict = path.join(root, 'fuzz', 'dict', `${target}.dict`);
  const args = [
    `-max_total_time=${Math.max(1, Math.round(seconds))}`,
    `-seed=${seed}`,
    '-timeout=10', // one input running longer is a hang
    '-rss_limit_mb=2048', // beyond it, out of memory
    '-malloc_limit_mb=2048',
    '-print_final_stats=1',
    `-artifact_prefix=${artifacts}`,
    ...(fs.existsSync(dict) ? [`-dict=${dict}`] : []),
    ...dirs,
  ];
  const r = await runProcess(path.join(buildDir, `${target}_fuzz`), args, {
    cwd: root,
    env: {
      ...process.env,
      ROUTESCOPE_FIXTURES: path.join(root, 'test', 'fixtures'),
      ASAN_OPTIONS: 'abort_on_error=1:detect_leaks=1',
      UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1',
    },
  }, seconds);
  const out = r.output;
  const done = [...out.matchAll(/^#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/gm)].at(-1);
  const pulse = [...out.matchAll(/^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/gm)].at(-1);
  const stat = (name) => Number(/stat::number_of_executed_units: (\d+)/.exec(out)?.[1] ?? (name === 'execs' ? (done ?? pulse)?.[1] ?? 0 : 0));
  const edges = Number(/INFO: Loaded \d+ modules\s+\((\d+) inline 8-bit counters\)/.exec(out)?.[1] ?? 0);
  const last = done ?? pulse;
  const crash = /ERROR: (AddressSanitizer|UndefinedBehaviorSanitizer|libFuzzer: deadly signal|LeakSanitizer)|runtime error:|uncaught exception|==\d+==ERROR/.test(out);
  const hang = /ERROR: libFuzzer: timeout/.test(out) || r.killedForHang;
  const oom = /ERROR: libFuzzer: (out-of-memory|malloc)/.test(out);
  const artifact = /Test unit written to (\S+)/.exec(out)?.[1];
  return {
    target,
    kind: 'libFuzzer + ASan/UBSan',
    execs: stat('execs'),
    seconds,
    coverage: last ? `${last[2]} of ${edges} edges (${((100 * Number(last[2])) / Math.max(1, edges)).toFixed(1)}%), ${last[3]} features` : 'n/a',
    corpus: last ? Number(last[4]) : 0,
    crashes: crash && !oom && !/ERROR: libFuzzer: timeout/.test(out) ? 1 : 0,
    hangs: hang ? 1 : 0,
    ooms: oom ? 1 : 0,
    failedToRun: !last && !crash && !hang && !oom ? `exit ${r.code ?? r.signal}` : undefined,
    artifact,
    detail: crash || hang || oom || !last ? out.split('\n').filter((l) => /ERROR|SUMMARY|runtime error|#\d+ 0x|Test unit|==\d+==/.test(l)).slice(0, 25).join('\n') : '',
  };
}

async function runJs(target, seconds) {
  const work = ensureDir(path.join(workRoot, target));
  const args = [
    '--max-old-space-size=2048',
    path.join(buildDir, 'js-fuzz.js'),
    '--target', target,
    '--seconds', String(seconds),
    '--seed', String(seed),
    '--work', work,
    '--corpus', path.join(root, 'fuzz', 'corpus', target),
    '--regressions', path.join(root, 'fuzz', 'regressions', target),
  ];
  const r = await runProcess(process.execPath, args, { cwd: root }, seconds);
  const stats = /FUZZ-STATS (.*)/.exec(r.output);
  const crashLine = /FUZZ-CRASH (.*)/.exec(r.output);
  const beats = [...r.output.matchAll(/FUZZ-BEAT (\d+)/g)].at(-1);
  const oom = /heap out of memory|Allocation failed/.test(r.output);
  const hang = r.killedForHang;
  const parsed = stats ? JSON.parse(stats[1]) : undefined;
  const crash = crashLine ? JSON.parse(crashLine[1]) : undefined;
  const current = path.join(work, 'current');
  let artifact = crash?.file;
  if ((hang || oom) && fs.existsSync(current)) {
    artifact = path.join(work, `${hang ? 'hang' : 'oom'}-${Date.now()}`);
    fs.copyFileSync(current, artifact);
  }
  const uncaught = !parsed && !crash && !hang && !oom;
  return {
    target,
    kind: 'seeded mutation (JS)',
    execs: parsed?.execs ?? Number(beats?.[1] ?? 0),
    seconds,
    coverage: parsed ? Object.entries(parsed.coverage).map(([f, p]) => `${path.basename(f)} ${p}%`).join(', ') : 'n/a',
    corpus: parsed?.corpus ?? 0,
    crashes: crash || uncaught ? 1 : 0,
    hangs: hang ? 1 : 0,
    ooms: oom ? 1 : 0,
    artifact,
    detail: crash ? crash.message : uncaught ? r.output.split('\n').slice(-15).join('\n') : '',
  };
}

// ---------------------------------------------------------------------------------------------------------------

const started = Date.now();
let buildSeconds = 0;
try {
  if (selected.some((t) => NATIVE.includes(t))) buildSeconds = buildNative();
  if (selected.some((t) => JS.includes(t))) await buildJs();
} catch (error) {
  console.error(`routescope fuzz: ${error.message}`);
  process.exit(1);
}
console.log(`# fuzz: ${selected.length} targets, ${share.toFixed(0)} s each (${totalSeconds} s in all), seed ${seed}${buildSeconds ? `; native build ${buildSeconds.toFixed(0)} s` : ''}`);
const results = [];
for (const target of selected) {
  const r = NATIVE.includes(target) ? await runNative(target, share) : await runJs(target, share);
  results.push(r);
  const verdict = r.crashes || r.hangs || r.ooms || r.failedToRun ? 'FAIL' : 'ok';
  console.log(`${verdict.padEnd(4)} ${target.padEnd(12)} ${String(r.execs).padStart(9)} execs  ${r.coverage}`);
  if (r.failedToRun) console.log(`     did not run (${r.failedToRun}):\n${r.detail}`);
  if (r.crashes || r.hangs || r.ooms) {
    console.log(`     ${r.crashes ? 'crash' : r.hangs ? 'hang' : 'out of memory'}; input: ${r.artifact ?? '(none saved)'}`);
    if (r.detail) console.log(r.detail.split('\n').map((l) => `     ${l}`).join('\n'));
    console.log(`     add it to fuzz/regressions/${target}/ with the fix, so every run replays it`);
  }
}
const sum = (k) => results.reduce((a, r) => a + (r[k] ?? 0), 0);
const summary = { seconds: Math.round((Date.now() - started) / 1000), seed, execs: sum('execs'), crashes: sum('crashes'), hangs: sum('hangs'), ooms: sum('ooms'), targets: results.map(({ detail, ...r }) => r) };
fs.mkdirSync(workRoot, { recursive: true });
fs.writeFileSync(path.join(workRoot, 'summary.json'), JSON.stringify(summary, null, 2) + '\n');
console.log(`# fuzz: ${summary.execs} executions, ${summary.crashes} crashes, ${summary.hangs} hangs, ${summary.ooms} out-of-memory (${summary.seconds} s; ${path.relative(root, path.join(workRoot, 'summary.json'))})`);
process.exit(summary.crashes || summary.hangs || summary.ooms || results.some((r) => r.failedToRun) ? 1 : 0);
