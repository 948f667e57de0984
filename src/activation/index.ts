export { startServerCommand } from './server-command.ts'
export type { ExitStatus, ServerCommand, ServerCommandOptions } from './server-command.ts'
