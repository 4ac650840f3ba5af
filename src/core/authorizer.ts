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
  /**
   * Whether a topic filter (MQTT wildcards) may be subscribed: true when some topic it
   * can match is allowed. Each topic it reaches is still checked with `canSubscribe`.
   * Absent: `canSubscribe` is asked with the filter itself.
   */
  canSubscribeFilter?(user: string | null, filter: string): boolean;
}

/** Everyone may do everything: the broker without an ACL file. */
export const ALLOW_ALL: Authorizer = {
  canPublish: () => true,
  canSubscribe: () => true,
};
