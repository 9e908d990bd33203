from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class OrderPlaced(_message.Message):
    __slots__ = ("order_id", "customer_id", "quantity", "total")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    customer_id: str
    quantity: int
    total: float
    def __init__(self, order_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., quantity: _Optional[int] = ..., total: _Optional[float] = ...) -> None: ...
