// What a statement call takes: text plus values, or node-postgres's `{ text, values, rowMode }`.

import type { RowMode } from './codec'

export interface QueryOptions {
  /** `'array'` returns each row as an array in column order. */
  rowMode?: RowMode
}

/** A statement as text plus values, or node-postgres's `{ text, values, rowMode }` object. */
export type QueryInput = string | { text: string; values?: readonly unknown[]; rowMode?: RowMode }

/** The text, values and row mode of a statement call; explicit arguments win over the object's. */
export function splitInput(input: QueryInput, params: readonly unknown[] | undefined, options: QueryOptions | undefined) {
  if (typeof input === 'string') return { text: input, values: params, rowMode: options?.rowMode ?? 'object' }
  if (input === null || typeof input !== 'object' || typeof input.text !== 'string') {
    throw new TypeError('query text must be a string or an object with a string `text`')
  }
  return { text: input.text, values: params ?? input.values, rowMode: options?.rowMode ?? input.rowMode ?? 'object' }
}
