# The Cap'n Proto RPC protocol messages, as much of them as burrow needs to read and write the
# control stream and RPC streams. Written for burrow; the file ID, ordinals and types follow the
# standard protocol (capnproto `rpc.capnp`), so the wire layout is the standard one and the struct
# IDs equal the standard ones.
@0xb312981b2552a250;

using Rust = import "rust.capnp";
$Rust.parentModule("schema");

using QuestionId = UInt32;
using AnswerId = QuestionId;
using ExportId = UInt32;
using ImportId = ExportId;

# Network-specific parameters; opaque to a two-party connection.
using RecipientId = AnyPointer;
using ThirdPartyCapId = AnyPointer;
using ProvisionId = AnyPointer;
using JoinKeyPart = AnyPointer;

# One RPC message; every frame on an RPC stream holds exactly one.
struct Message @0x91b79f1f808db032 {
  union {
    unimplemented @0 :Message;
    abort @1 :Exception;
    bootstrap @8 :Bootstrap;
    call @2 :Call;
    return @3 :Return;
    finish @4 :Finish;
    resolve @5 :Resolve;
    release @6 :Release;
    disembargo @13 :Disembargo;
    obsoleteSave @7 :AnyPointer;
    obsoleteDelete @9 :AnyPointer;
    provide @10 :Provide;
    accept @11 :Accept;
    join @12 :Join;
  }
}

# Asks for the peer's bootstrap capability.
struct Bootstrap @0xe94ccf8031176ec4 {
  questionId @0 :QuestionId;
  deprecatedObjectId @1 :AnyPointer;
}

# Starts a method call.
struct Call @0x836a53ce789d4cd4 {
  questionId @0 :QuestionId;
  target @1 :MessageTarget;
  interfaceId @2 :UInt64;
  methodId @3 :UInt16;
  allowThirdPartyTailCall @8 :Bool = false;
  params @4 :Payload;
  sendResultsTo :union {
    caller @5 :Void;
    yourself @6 :Void;
    thirdParty @7 :RecipientId;
  }
}

# Completes a call (or a bootstrap).
struct Return @0x9e19b28d3db3573a {
  answerId @0 :AnswerId;
  releaseParamCaps @1 :Bool = true;
  union {
    results @2 :Payload;
    exception @3 :Exception;
    canceled @4 :Void;
    resultsSentElsewhere @5 :Void;
    takeFromOtherQuestion @6 :QuestionId;
    acceptFromThirdParty @7 :ThirdPartyCapId;
  }
}

# The caller is done with a question.
struct Finish @0xd37d2eb2c2f80e63 {
  questionId @0 :QuestionId;
  releaseResultCaps @1 :Bool = true;
}

# A promise the sender exported has settled.
struct Resolve @0xbbc29655fa89086e {
  promiseId @0 :ExportId;
  union {
    cap @1 :CapDescriptor;
    exception @2 :Exception;
  }
}

# The sender drops references to an imported capability.
struct Release @0xad1a6c0d7dd07497 {
  id @0 :ImportId;
  referenceCount @1 :UInt32;
}

# Lifts an embargo on a resolved promise.
struct Disembargo @0xf964368b0fbd3711 {
  target @0 :MessageTarget;
  context :union {
    senderLoopback @1 :UInt32;
    receiverLoopback @2 :UInt32;
    accept @3 :Void;
    provide @4 :QuestionId;
  }
}

# Level 3: offers a capability to a third party.
struct Provide @0x9c6a046bfbc1ac5a {
  questionId @0 :QuestionId;
  target @1 :MessageTarget;
  recipient @2 :RecipientId;
}

# Level 3: picks up a capability offered by a third party.
struct Accept @0xd4c9b56290554016 {
  questionId @0 :QuestionId;
  provision @1 :ProvisionId;
  embargo @2 :Bool;
}

# Level 4: joins proxied capabilities.
struct Join @0xfbe1980490e001af {
  questionId @0 :QuestionId;
  target @1 :MessageTarget;
  keyPart @2 :JoinKeyPart;
}

# Which capability a call (or disembargo) is addressed to.
struct MessageTarget @0x95bc14545813fbc1 {
  union {
    importedCap @0 :ImportId;
    promisedAnswer @1 :PromisedAnswer;
  }
}

# Parameters or results: a struct plus the capabilities it references.
struct Payload @0x9a0e61223d96743b {
  content @0 :AnyPointer;
  capTable @1 :List(CapDescriptor);
}

# How one capability in a payload is passed.
struct CapDescriptor @0x8523ddc40b86b8b0 {
  union {
    none @0 :Void;
    senderHosted @1 :ExportId;
    senderPromise @2 :ExportId;
    receiverHosted @3 :ImportId;
    receiverAnswer @4 :PromisedAnswer;
    thirdPartyHosted @5 :ThirdPartyCapDescriptor;
  }
}

# A capability that some not-yet-answered question will return.
struct PromisedAnswer @0xd800b1d6cd6f1ca0 {
  questionId @0 :QuestionId;
  transform @1 :List(Op);

  # One step from the answer's root to the capability.
  struct Op @0xf316944415569081 {
    union {
      noop @0 :Void;
      getPointerField @1 :UInt16;
    }
  }
}

# Level 3: a capability hosted by a third vat.
struct ThirdPartyCapDescriptor @0xd37007fde1f0027d {
  id @0 :ThirdPartyCapId;
  vineId @1 :ExportId;
}

# Why a call or the whole connection failed.
struct Exception @0xd625b7063acf691a {
  reason @0 :Text;
  type @3 :Type;
  obsoleteIsCallersFault @1 :Bool;
  obsoleteDurability @2 :UInt16;

  # How the receiver may react to the failure.
  enum Type @0xb28c96e23f4cbd58 {
    failed @0;
    overloaded @1;
    disconnected @2;
    unimplemented @3;
  }
}
