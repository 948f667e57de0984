/**
 * Errors of the control socket, with stable codes like the rest of the package.
 */
export const CONTROL_ERROR_CODES = ['CTL_BAD_FRAME', 'CTL_BAD_COMMAND', 'CTL_TIMEOUT', 'CTL_CONNECT', 'CTL_CLOSED', 'CTL_UNTRUSTED'] as const
export type ControlErrorCode = (typeof CONTROL_ERROR_CODES)[number]

export class ControlError extends Error {
  readonly code: ControlErrorCode
  constructor (code: ControlErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
  }

  override get name (): string {
    return 'ControlError'
  }
}
