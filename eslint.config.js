// Type-aware lint for the bug classes the compiler lets through: a promise nobody handles
// (floating, or passed where a callback's result is ignored), an await on a non-promise, and a
// switch over a union that misses a member. Nothing stylistic: the compiler's strict mode and
// review cover the rest.
import { defineConfig, globalIgnores } from 'eslint/config'
import tseslint from 'typescript-eslint'

export default defineConfig(
  globalIgnores(['dist/**', 'docs/**', 'node_modules/**', 'bench/node_modules/**', 'bench/.build/**', 'bench/results/**', 'scratch/**', '**/*.js', '**/*.mjs', '**/*.cjs']),
  {
    files: ['src/**/*.ts', 'src/**/*.cts', 'test/**/*.ts', 'bench/**/*.ts', 'scripts/**/*.ts'],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname }
    },
    plugins: { '@typescript-eslint': tseslint.plugin },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // node:test's test() and describe() return promises the runner itself awaits.
      '@typescript-eslint/no-floating-promises': ['error', {
        allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['test', 'it', 'describe', 'suite'] }]
      }],
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': ['error', { considerDefaultExhaustiveForUnions: true }]
    }
  }
)
