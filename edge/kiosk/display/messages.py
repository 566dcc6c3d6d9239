"""The words on the display: every state and denial reason in Chinese and English.

Large text first (`zh`, `en`), a smaller hint below (`zh_hint`, `en_hint`) and a `tone` the page
colours by: neutral, active, ok, bad or warn. Rendering never raises: a detail the kiosk got
wrong shows the plain text of its state rather than breaking the screen.
"""

from __future__ import annotations

import math
from typing import Any

from edge.kiosk.display.state import KioskState

Text = tuple[str, str]  # (zh, en)

_NO_HINT: Text = ("", "")
_TRY_OR_ALTERNATIVE: Text = ("请重试，或使用卡或密码", "Please try again, or use your card or PIN")
_ALTERNATIVE: Text = ("也可以使用卡或密码", "You can also use your card or PIN")

# state -> (large text, hint, tone) where the detail does not change the words.
_FIXED: dict[str, tuple[Text, Text, str]] = {
    "look": (("请看摄像头", "Please look at the camera"), _NO_HINT, "neutral"),
    "closer": (("请靠近一些", "Please come closer"), _NO_HINT, "active"),
    "step_back": (("请后退一点", "Please step back a little"), _NO_HINT, "active"),
    "one_person": (("请一次一人", "One person at a time, please"), _NO_HINT, "active"),
    "blink": (("请眨眨眼", "Please blink now"), ("请看着摄像头", "Keep looking at the camera"),
              "active"),
    "verifying": (("正在验证…", "Checking…"), ("请稍候", "Please wait"), "active"),
    "alternative": (("请使用卡或密码", "Please use your card or PIN"), _NO_HINT, "warn"),
    "locked_out": (("尝试次数过多，请稍后再试", "Too many attempts — please wait"), _ALTERNATIVE,
                   "warn"),
    "offline_queued": (("记录已安全保存", "Your record is saved safely"),
                       ("网络暂时中断，恢复后自动上传", "The network is down; it will be sent "
                        "when it is back"), "ok"),
    "service_unavailable": (("服务暂不可用", "Service unavailable"),
                            ("请使用卡或密码", "Please use your card or PIN"), "warn"),
    "maintenance": (("设备维护中", "Out of service for maintenance"),
                    ("请使用卡或密码，或稍后再试", "Please use your card or PIN, or try again "
                     "shortly"), "warn"),
}

CLAIM_TEXT: dict[str, Text] = {
    "qr": ("请出示二维码", "Please show your QR code to the camera"),
    "card": ("请刷卡", "Please tap your card"),
    "phone": ("请在键盘上输入手机号", "Please enter your phone number on the keypad"),
    "qr_or_card": ("请出示二维码或刷卡", "Please show your QR code or tap your card"),
    "face": ("请看摄像头", "Please look at the camera"),
    "any": ("请出示二维码、刷卡或输入手机号",
            "Show your QR code, tap your card or enter your phone number"),
}
# Claim methods of edge/kiosk/claims.py and profiles -> the words above.
_CLAIM_ALIASES = {"keypad": "phone", "pos": "phone", "household": "face", "liveness": "face",
                  "fare_gate": "qr_or_card", "bakery": "phone", "smart_lock": "face",
                  "demo": "face"}

REASON_TEXT: dict[str, Text] = {
    "mismatch": ("人脸与账户不符", "Your face did not match this account"),
    "stranger": ("此人脸未在本门登记", "This face is not registered at this door"),
    "spoof": ("未能确认为真人", "We could not confirm a live face"),
    "static": ("画面没有动作，未能确认为真人",
               "No movement was seen — we could not confirm a live face"),
    "no_blink": ("没有看到眨眼", "We did not see you blink"),
    "face_changed": ("验证中人脸发生了变化", "A different face appeared during the check"),
    "timeout": ("验证超时", "The check took too long"),
    "expired_token": ("二维码已过期", "This QR code has expired"),
    "forged_token": ("二维码无效", "This QR code is not valid"),
    "used_token": ("二维码已被使用", "This QR code has already been used"),
    "unknown_card": ("无法识别此卡", "This card is not recognised"),
    "no_face": ("没有看到人脸", "No face was seen"),
    "no_template": ("本机没有您的登记信息", "You are not registered on this device"),
    "template_error": ("无法读取您的登记信息", "Your registration could not be read"),
    "no_amount": ("收银台没有发来金额", "No amount was received from the till"),
    "locked_out": ("尝试次数过多", "Too many attempts"),
    "quality:size": ("距离太远，请靠近一些", "Too far away — please come closer"),
    "quality:too_far": ("距离太远，请靠近一些", "Too far away — please come closer"),
    "quality:too_close": ("距离太近，请后退一点", "Too close — please step back a little"),
    "quality:yaw": ("请正对摄像头", "Please face the camera straight on"),
    "quality:pitch": ("请平视摄像头", "Please keep your head level"),
    "quality:blur": ("画面模糊，请保持不动", "The picture was blurred — please hold still"),
    "quality:dark": ("光线太暗", "It is too dark here"),
    "quality:bright": ("光线太亮", "There is too much light"),
    "quality:unknown": ("画面不够清楚", "The picture was not clear enough"),
}
_NOT_VERIFIED: Text = ("未通过验证", "Not verified")

_APPROVED: dict[str, Text] = {
    "payment": ("支付成功", "Payment approved"),
    "fare": ("已扣费，请通行", "Fare paid — please go through"),
    "door": ("门已打开", "Door unlocked"),
}
_VERIFIED: Text = ("验证通过", "Verified")

# ISO 4217 code -> (symbol, decimals); others show as "12.50 XYZ".
_CURRENCIES: dict[str, tuple[str, int]] = {
    "CNY": ("¥", 2), "HKD": ("HK$", 2), "TWD": ("NT$", 0), "USD": ("$", 2), "EUR": ("€", 2),
    "GBP": ("£", 2), "JPY": ("JP¥", 0), "KRW": ("₩", 0), "SGD": ("S$", 2),
}


def format_amount(amount: object, currency: object = "CNY") -> str:
    """`12.5, "CNY"` -> "¥12.50"; "" for a missing or non-numeric amount."""
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(amount):
        return ""
    code = currency.upper() if isinstance(currency, str) else ""
    symbol, decimals = _CURRENCIES.get(code, ("", 2))
    number = f"{amount:,.{decimals}f}"
    if symbol:
        return f"-{symbol}{number[1:]}" if number.startswith("-") else f"{symbol}{number}"
    return f"{number} {code}".strip()


def reason_text(reason: object) -> Text:
    """Plain words for a denial reason; any other `quality:*` and unknown reasons fall back."""
    if not isinstance(reason, str):
        return _NOT_VERIFIED
    if reason in REASON_TEXT:
        return REASON_TEXT[reason]
    return REASON_TEXT["quality:unknown"] if reason.startswith("quality:") else _NOT_VERIFIED


def claim_text(detail: dict[str, Any]) -> Text:
    """Words for the claim prompt from detail `method` (qr, card, phone) or `profile`."""
    for key in ("method", "profile"):
        value = detail.get(key)
        if isinstance(value, str):
            name = _CLAIM_ALIASES.get(value, value)
            if name in CLAIM_TEXT:
                return CLAIM_TEXT[name]
    return CLAIM_TEXT["any"]


def _approved(detail: dict[str, Any]) -> tuple[Text, Text, str]:
    zh, en = _APPROVED.get(str(detail.get("kind")), _VERIFIED)
    money = format_amount(detail.get("amount"), detail.get("currency", "CNY"))
    if money:
        zh, en = f"{zh} {money}", f"{en} {money}"
    door = detail.get("door")
    if isinstance(door, str) and door:
        return (zh, en), (f"门：{door}", f"Door: {door}"), "ok"
    return (zh, en), ("谢谢", "Thank you"), "ok"


def _words(state: KioskState) -> tuple[Text, Text, str]:
    detail = state.detail
    if state.state in _FIXED:
        return _FIXED[state.state]
    if state.state == "claim":
        return claim_text(detail), _NO_HINT, "neutral"
    if state.state == "approved":
        return _approved(detail)
    if state.state == "denied":
        return reason_text(detail.get("reason")), _TRY_OR_ALTERNATIVE, "bad"
    return _FIXED["look"]  # a state added to STATES without words yet: readable, never blank


def render(state: KioskState) -> dict[str, str]:
    """The page's words for a state: zh, en (large), zh_hint, en_hint (small) and tone."""
    (zh, en), (zh_hint, en_hint), tone = _words(state)
    return {"zh": zh, "en": en, "zh_hint": zh_hint, "en_hint": en_hint, "tone": tone}
