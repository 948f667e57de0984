/**
 * Spec names for numbers seen on the wire, for error messages and `nbdts info`. Unknown
 * values print as hex so a message still says exactly what arrived.
 */
import { NBD_CMD, NBD_OPT, NBD_REP, NBD_REPLY_TYPE } from './constants.ts'

function reverse (table: Record<string, number>, prefix: string): Map<number, string> {
  return new Map(Object.entries(table).map(([name, value]) => [value, prefix + name]))
}

const OPT_NAMES = reverse(NBD_OPT, 'NBD_OPT_')
const REP_NAMES = reverse(NBD_REP, 'NBD_REP_')
const CMD_NAMES = reverse(NBD_CMD, 'NBD_CMD_')
const REPLY_TYPE_NAMES = reverse(NBD_REPLY_TYPE, 'NBD_REPLY_TYPE_')

const hex = (value: number): string => '0x' + value.toString(16)

export const optionName = (option: number): string => OPT_NAMES.get(option) ?? `option ${hex(option)}`
export const replyName = (type: number): string => REP_NAMES.get(type) ?? `reply type ${hex(type)}`
export const commandName = (type: number): string => CMD_NAMES.get(type) ?? `command ${hex(type)}`
export const chunkTypeName = (type: number): string => REPLY_TYPE_NAMES.get(type) ?? `chunk type ${hex(type)}`
