// `node --import ./record-imports.mjs`: appends the URL of every module loaded (ESM and, through
// the ESM loader, CommonJS entry points of packages) to $NBDTS_RECORD_IMPORTS, one a line.
import { appendFileSync } from 'node:fs'
import { register } from 'node:module'

if (process.env.NBDTS_RECORD_IMPORTS !== undefined) {
  register('data:text/javascript,' + encodeURIComponent(`
    import { appendFileSync } from 'node:fs'
    export async function load (url, context, next) {
      appendFileSync(${JSON.stringify(process.env.NBDTS_RECORD_IMPORTS)}, url + '\\n')
      return next(url, context)
    }`))
  // CommonJS dependencies of a package (commander's lib/*.js) go through require, not the hook.
  const Module = (await import('node:module')).default
  const original = Module.prototype.require
  Module.prototype.require = function (id) {
    const result = original.apply(this, arguments)
    try { appendFileSync(process.env.NBDTS_RECORD_IMPORTS, 'require:' + Module._resolveFilename(id, this) + '\n') } catch { /* a builtin */ }
    return result
  }
}
