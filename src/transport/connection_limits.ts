/**
 * Connection limits, in all and per remote address. Each connection holds buffers, so
 * their number is what bounds the memory a crowd of clients can take.
 *
 * @module
 */

/** Counts admitted connections; refuses past the limits. */
export class ConnectionLimits {
  readonly #max: number;
  readonly #maxPerAddress: number;
  readonly #onChange: ((total: number) => void) | undefined;
  #total = 0;
  #perAddress = new Map<string, number>();

  /**
   * @param max connections in all
   * @param maxPerAddress connections from one address
   * @param onChange told the new total after each admission and release
   */
  constructor(max: number, maxPerAddress: number, onChange?: (total: number) => void) {
    this.#max = max;
    this.#maxPerAddress = maxPerAddress;
    this.#onChange = onChange;
  }

  /** Connections admitted and not yet released. */
  get total(): number {
    return this.#total;
  }

  /** Admits a connection from `address`, or returns why it is refused. */
  admit(address: string): string | null {
    if (this.#total >= this.#max) return `too many connections (limit ${this.#max})`;
    const n = this.#perAddress.get(address) ?? 0;
    if (n >= this.#maxPerAddress) {
      return `too many connections from ${address} (limit ${this.#maxPerAddress})`;
    }
    this.#perAddress.set(address, n + 1);
    this.#total++;
    this.#onChange?.(this.#total);
    return null;
  }

  /** Releases a connection admitted from `address`. */
  release(address: string): void {
    const n = (this.#perAddress.get(address) ?? 1) - 1;
    if (n > 0) this.#perAddress.set(address, n);
    else this.#perAddress.delete(address);
    this.#total--;
    this.#onChange?.(this.#total);
  }
}
