/**
 * The TLS flags `info` and `mount` share. They add to (and override) the URI's own TLS query
 * parameters; an nbds:// URI needs none of them when the server's certificate chains to the
 * system's CAs.
 */
import { Option, type Command } from 'commander'
import type { GivenTlsOptions } from '../client/options.ts'

/** The TLS flags are the library's TLS options, under the same names (--no-tls-verify-peer: false). */
export type TlsFlags = GivenTlsOptions

export function addTlsOptions (command: Command): Command {
  return command
    .addOption(new Option('--tls <mode>', 'off, on (when the server offers it) or require (default: require for nbds:// and when credentials are given, else off)').choices(['off', 'on', 'require']))
    .option('--tls-certificates <dir>', 'X.509: ca-cert.pem, and client-cert.pem + client-key.pem for a client certificate')
    .option('--tls-psk-file <file>', 'PSK: username:hexkey lines (nbdkit --tls-psk, psktool)')
    .option('--tls-username <name>', 'PSK username (default: the URI\'s user, else the login name)')
    .option('--tls-hostname <name>', 'the name the server\'s certificate must carry (default: the TCP host)')
    .option('--no-tls-verify-peer', 'do not verify the server\'s certificate (insecure)')
}

/** The same flags again, for the detached daemon's command line. */
export function tlsArgs (flags: TlsFlags): string[] {
  const args: string[] = []
  if (flags.tls !== undefined) args.push('--tls', flags.tls)
  if (flags.tlsCertificates !== undefined) args.push('--tls-certificates', flags.tlsCertificates)
  if (flags.tlsPskFile !== undefined) args.push('--tls-psk-file', flags.tlsPskFile)
  if (flags.tlsUsername !== undefined) args.push('--tls-username', flags.tlsUsername)
  if (flags.tlsHostname !== undefined) args.push('--tls-hostname', flags.tlsHostname)
  if (flags.tlsVerifyPeer === false) args.push('--no-tls-verify-peer')
  return args
}
