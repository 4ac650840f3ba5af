/**
 * Who may publish to and subscribe to which topic. The core asks; an ACL (or nothing)
 * answers. `user` is null for a client that did not log in (publishers when
 * authentication is off).
 *
 * @module
 */

/** Answers access questions for the core. */
export interface Authorizer {
  canPublish(user: string | null, topic: string): boolean;
  canSubscribe(user: string | null, topic: string): boolean;
}

/** Everyone may do everything: the broker without an ACL file. */
export const ALLOW_ALL: Authorizer = {
  canPublish: () => true,
  canSubscribe: () => true,
};
