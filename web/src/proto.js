// The wire format: protocol/chat.proto, read by protobufjs at build time (esbuild
// inlines the .proto text), so the page and the node cannot disagree about it.
import protobuf from "protobufjs";
import protoText from "../../protocol/chat.proto";

const root = protobuf.parse(protoText, { keepCase: true }).root;
const ClientFrame = root.lookupType("chat.v1.ClientFrame");
const ServerFrame = root.lookupType("chat.v1.ServerFrame");

/** One ClientFrame carrying `body` in its oneof field `field`, as bytes. */
export function encodeRequest(requestId, field, body) {
  // fromObject, not create: it turns enum names ("GROUP") into their numbers.
  return ClientFrame.encode(ClientFrame.fromObject({ request_id: requestId, [field]: body })).finish();
}

/** A ServerFrame as a plain object: numbers for uint64s, names for enums, and
 * `body` naming the oneof field that is set. */
export function decodeFrame(bytes) {
  const message = ServerFrame.decode(bytes);
  return ServerFrame.toObject(message, { longs: Number, enums: String, defaults: true, oneofs: true });
}
