/**
 * Wire constants of the NBD protocol (doc/proto.md, plus the extended-headers branch), under
 * their spec names. Plain `as const` objects rather than enums so the names survive type
 * stripping and read the same as in the spec, QEMU and libnbd.
 */

/** "NBDMAGIC", first 8 bytes of every greeting. */
export const NBD_INIT_MAGIC = 0x4e42444d41474943n
/** "IHAVEOPT": newstyle greeting, and the prefix of every option request. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n
/** The oldstyle greeting's second word (`cliserv_magic`). */
export const NBD_CLISERV_MAGIC = 0x00420281861253n
/** Prefix of every option reply. */
export const NBD_REP_MAGIC = 0x0003e889045565a9n

export const NBD_REQUEST_MAGIC = 0x25609513
export const NBD_EXTENDED_REQUEST_MAGIC = 0x21e41c71
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef
export const NBD_EXTENDED_REPLY_MAGIC = 0x6e8a278c

/** Handshake flags, sent by the server in the greeting. */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
export const NBD_FLAG_NO_ZEROES = 1 << 1

/** Client flags, our answer to the greeting. */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
export const NBD_FLAG_C_NO_ZEROES = 1 << 1

export const NBD_OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11
} as const
export type NbdOpt = (typeof NBD_OPT)[keyof typeof NBD_OPT]

/** Every option reply type with bit 31 set is an error, including types we do not know. */
export const NBD_REP_FLAG_ERROR = 0x80000000

export const NBD_REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
  ERR_EXT_HEADER_REQD: 0x8000000a
} as const

export const NBD_INFO = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3
} as const

/** Transmission flags (u16), from NBD_INFO_EXPORT or the EXPORT_NAME reply. */
export const NBD_FLAG = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
  BLOCK_STATUS_PAYLOAD: 1 << 12
} as const

export const NBD_CMD = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8
} as const
export type NbdCmd = (typeof NBD_CMD)[keyof typeof NBD_CMD]

export const NBD_CMD_FLAG = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
  PAYLOAD_LEN: 1 << 5
} as const

export const NBD_REPLY_FLAG_DONE = 1 << 0

/** Error chunk types have bit 15 set. */
export const NBD_REPLY_TYPE_ERROR_BIT = 1 << 15

export const NBD_REPLY_TYPE = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  BLOCK_STATUS_EXT: 6,
  ERROR: NBD_REPLY_TYPE_ERROR_BIT | 1,
  ERROR_OFFSET: NBD_REPLY_TYPE_ERROR_BIT | 2
} as const

/** `base:allocation` status bits. */
export const NBD_STATE_HOLE = 1 << 0
export const NBD_STATE_ZERO = 1 << 1
/** `qemu:dirty-bitmap:*` status bit. */
export const NBD_STATE_DIRTY = 1 << 0

/** The IANA port. */
export const NBD_DEFAULT_PORT = 10809

/** Strings (names, messages, queries) MUST be at most this long (spec, Conventions). */
export const NBD_MAX_STRING = 4096

/**
 * The default largest payload: a server that advertises nothing SHOULD accept 32 MiB, and a
 * portable client stays at or below it (spec, "Size constraints").
 */
export const NBD_DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024

/** The largest number of extents a status chunk SHOULD carry (2^20), so 8 MiB + 4 of payload. */
export const NBD_MAX_EXTENTS = 1 << 20

// Header sizes.
export const NBD_GREETING_PREFIX = 16 // NBDMAGIC + IHAVEOPT|cliserv
export const NBD_OLDSTYLE_REST = 8 + 4 + 124 // size, flags, zeroes after the 16-byte prefix
export const NBD_OPTION_HEADER = 16 // IHAVEOPT, option, length
export const NBD_OPTION_REPLY_HEADER = 20 // magic, option, type, length
export const NBD_REQUEST_HEADER = 28
export const NBD_EXTENDED_REQUEST_HEADER = 32
export const NBD_SIMPLE_REPLY_HEADER = 16
export const NBD_STRUCTURED_REPLY_HEADER = 20
export const NBD_EXTENDED_REPLY_HEADER = 32
export const NBD_EXPORT_NAME_REPLY = 10 // size + transmission flags (+ 124 zeroes without NO_ZEROES)
export const NBD_EXPORT_NAME_ZEROES = 124
