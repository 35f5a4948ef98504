// The `routescope` CLI over the native engine: inspect and grad (cli/inspect.ts), generate (cli/generate.ts), bench
// and info (cli/bench.ts), reference build and eval (cli/adapt.ts), stats (cli/stats.ts); what they share is in
// cli/setup.ts. Flags and JSON keys are a scripting contract (README "CLI reference").
import { Command, CommanderError } from 'commander';
import { registerAdaptCommands } from './adapt';
import { registerHeadroomCommand } from './headroom';
import { registerBenchCommands } from './bench';
import { registerGenerateCommand } from './generate';
import { registerInspectCommands } from './inspect';
import { registerStatsCommand } from './stats';
import { fail, installInterrupt, oneLineErrors } from './setup';

const VERSION = '0.1.0';

export function buildProgram(): Command {
  const program = oneLineErrors(
    new Command('routescope')
      .description('Run Hugging Face Mixture-of-Experts checkpoints and see which experts every token uses.')
      .version(VERSION)
      .showSuggestionAfterError(true),
  );
  registerInspectCommands(program);
  registerGenerateCommand(program);
  registerBenchCommands(program);
  registerAdaptCommands(program);
  registerHeadroomCommand(program);
  registerStatsCommand(program);
  // Options after the subcommand belong to it; global flags are only --help and --version.
  for (const command of program.commands) {
    oneLineErrors(command);
    for (const sub of command.commands) oneLineErrors(sub);
  }
  return program;
}

export async function main(argv: string[]): Promise<void> {
  installInterrupt();
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(process.exitCode ?? 0); // output piped into e.g. head
    throw error;
  });
  const program = buildProgram();
  try {
    if (argv.length <= 2) {
      program.outputHelp();
      process.exitCode = 2;
      return;
    }
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      const ok = ['commander.helpDisplayed', 'commander.version', 'commander.help'].includes(error.code);
      process.exitCode = ok ? 0 : 2;
      return;
    }
    fail(error);
  }
}

// bin/routescope.js calls main(); running the bundle directly works too.
if (require.main === module) void main(process.argv);
